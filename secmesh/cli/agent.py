"""`secmesh agent`: the node agent (SDS v3 + SPIFFE Workload API on a Unix socket).

Every field of `configs/agent.yaml` is also a flag and a `SECMESH_AGENT_<SECTION>_<FIELD>`
environment variable (precedence: defaults < file < env < flags). Heavy imports (grpc, uvloop,
Envoy protos) happen inside the command. Exit codes: 0 after a clean stop, 1 when the agent
cannot start (bad config with file:line, unreadable JWKS or root bundle, socket already served).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


def _opt(*names: str, **kw: Any):  # noqa: ANN202 - click decorator
    return click.option(*names, default=None, show_default=False, **kw)


@click.command(name="agent")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="SECMESH_AGENT_CONFIG", help="YAML file (see configs/agent.yaml).")
@_opt("--socket", help="UDS path [/var/run/secrets/workload-spiffe-uds/socket].")
@_opt("--socket-mode", help="Octal file mode of the socket [0660].")
@_opt("--ca-address", help="HOST:PORT of the CA's CreateCertificate endpoint [istiod.istio-system.svc:15012].")
@_opt("--ca-root", help="PEM roots that verify the CA's TLS certificate [/var/run/secrets/istio/root-cert.pem].")
@_opt("--ca-server-name", help="TLS name to expect from the CA instead of the address host.")
@_opt("--ca-timeout", help="Deadline of one CreateCertificate call [10s].")
@_opt("--backoff-initial", help="First retry delay after a CA failure [1s].")
@_opt("--backoff-max", help="Retry delay cap [30s].")
@_opt("--trust-domain", help="SPIFFE trust domain [cluster.local].")
@_opt("--ttl", help="Requested leaf lifetime [24h].")
@_opt("--rotation-fraction", type=float, help="Rotate when this share of the lifetime is left [0.5].")
@_opt("--rotation-jitter", type=float, help="± jitter on the rotation fraction [0.01].")
@_opt("--jwt-svid-ttl", help="Lifetime of minted JWT-SVIDs [5m].")
@_opt("--token-file", help="The agent's own workload token; '' disables [/var/run/secrets/tokens/istio-token].")
@_opt("--jwks", help="JWKS file or http(s) URL validating workload tokens [/var/run/secrets/tokens/jwks.json].")
@click.option("--issuer", "issuers", multiple=True, help="Accepted token issuer (repeatable) [any].")
@click.option("--audience", "audiences", multiple=True, help="Accepted token audience (repeatable) [istio-ca].")
@_opt("--token-leeway", help="Clock-skew leeway for token exp/nbf [30s].")
@_opt("--unknown-resource", type=click.Choice(["istio", "reject"]),
      help="SDS names other than default/ROOTCA: serve the workload cert (istio) or INVALID_ARGUMENT [istio].")
@_opt("--sds/--no-sds", "sds_enabled", help="Serve Envoy SDS v3 [on].")
@_opt("--workload-api/--no-workload-api", "workload_api_enabled", help="Serve the SPIFFE Workload API [on].")
@_opt("--admin", help="Loopback HOST:PORT for /ready and /metrics; '' disables [127.0.0.1:15020].")
@_opt("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def cli(config_file: Path | None, **opts: Any) -> None:
    """Node agent: SDS v3 and SPIFFE Workload API on a Unix socket."""
    from secmesh import log
    from secmesh.agent.config import load
    from secmesh.errors import SecmeshError

    flags = _flags(opts)
    try:
        config = load(config_file, flags)
    except SecmeshError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    log.setup(config.log_level)
    from secmesh.agent.app import run

    try:
        sys.exit(run(config))
    except SecmeshError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


_SECTIONS = {
    "socket": ("socket", "path"), "socket_mode": ("socket", "mode"),
    "ca_address": ("ca", "address"), "ca_root": ("ca", "root"), "ca_server_name": ("ca", "server_name"),
    "ca_timeout": ("ca", "timeout"), "backoff_initial": ("ca", "backoff_initial"),
    "backoff_max": ("ca", "backoff_max"),
    "trust_domain": ("identity", "trust_domain"), "ttl": ("identity", "ttl"),
    "rotation_fraction": ("identity", "rotation_fraction"), "rotation_jitter": ("identity", "rotation_jitter"),
    "jwt_svid_ttl": ("identity", "jwt_svid_ttl"),
    "token_file": ("token", "file"), "jwks": ("token", "jwks"), "issuers": ("token", "issuers"),
    "audiences": ("token", "audiences"), "token_leeway": ("token", "leeway"),
    "unknown_resource": ("sds", "unknown_resource"), "sds_enabled": ("sds", "enabled"),
    "workload_api_enabled": ("workload_api", "enabled"), "admin": ("admin", "address"),
    "log_level": (None, "log_level"),
}


def _flags(opts: dict[str, Any]) -> dict[str, Any]:
    """Flat click options → the nested mapping `load_config` merges on top (unset flags left out)."""
    out: dict[str, Any] = {}
    for name, value in opts.items():
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            value = list(value)
        section, field = _SECTIONS[name]
        if section is None:
            out[field] = value
        else:
            out.setdefault(section, {})[field] = value
    return out
