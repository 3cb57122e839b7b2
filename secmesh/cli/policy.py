"""`secmesh policy …`: offline tools over Istio security policies (check now; lint/test/diff later).

Exit codes of `check`: 0 ALLOW, 1 DENY, 2 error (invalid or unsupported policy, invalid
request). The decision is one JSON object on stdout; errors go to stderr as
`error: file:line:col: message`.
"""

from __future__ import annotations

import json
import sys

import click

EXIT_ALLOW, EXIT_DENY, EXIT_ERROR = 0, 1, 2


@click.group(name="policy", help="Istio AuthorizationPolicy tools: check (lint, test, diff to come).")
def cli() -> None:
    pass


@cli.command("check")
@click.option("--policies", "policies_path", required=True, type=click.Path(exists=False),
              help="A policy file or a directory (every *.yaml / *.yml below it).")
@click.option("--request", "request_path", required=True, type=click.Path(exists=False),
              help="The request to decide, as JSON (see docs: workload, protocol, source, destination, request).")
@click.option("--root-namespace", default="istio-system", show_default=True,
              help="Istio's meshConfig.rootNamespace: policies there apply mesh-wide.")
@click.option("--path-normalization", type=click.Choice(["BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "NONE"]),
              default="BASE", show_default=True, help="meshConfig.pathNormalization applied before path matching.")
def check(policies_path: str, request_path: str, root_namespace: str, path_normalization: str) -> None:
    """Decide one request the way Istio would; exit 0 ALLOW, 1 DENY, 2 error."""
    from secmesh.errors import SecmeshError
    from secmesh.policy.engine import Engine
    from secmesh.policy.load import load_policies
    from secmesh.policy.normalize import PathNormalization
    from secmesh.policy.request_json import load_request

    try:
        policies = load_policies(policies_path)
        req = load_request(request_path, PathNormalization(path_normalization))
        engine = Engine(policies, req.workload, root_namespace)
        decision = engine.decide(req.conn, req.request, req.protocol)
        mode = engine.peer.mode(req.conn.dest_port)
    except SecmeshError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_ERROR)
    out = decision.to_dict()
    out.update({"protocol": req.protocol, "mtls_mode": mode.value,
                "workload": {"namespace": req.workload.namespace, "labels": dict(req.workload.labels)}})
    click.echo(json.dumps(out, sort_keys=False))
    sys.exit(EXIT_ALLOW if decision.allowed else EXIT_DENY)
