"""Shared plumbing for the table-driven conformance cases: YAML policies + a request dict → Decision."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from secmesh.policy.decision import Decision
from secmesh.policy.engine import Engine
from secmesh.policy.load import loads_policies
from secmesh.policy.request_json import parse_request

ROOT = "istio-system"
CLIENT = "spiffe://cluster.local/ns/frontend/sa/web"


def request(*, ns: str = "default", labels: dict[str, str] | None = None, protocol: str = "http",
            principal: str | None = CLIENT, ip: str = "10.0.0.1", remote_ip: str | None = None,
            dest_ip: str = "10.0.0.2", port: int = 8080, sni: str | None = None, method: str = "GET",
            path: str = "/", host: str = "app.default.svc", headers: dict[str, Any] | None = None,
            claims: dict[str, Any] | None = None) -> dict[str, Any]:
    src: dict[str, Any] = {"ip": ip}
    if principal is not None:
        src["principal"] = principal
    if remote_ip is not None:
        src["remote_ip"] = remote_ip
    doc: dict[str, Any] = {"workload": {"namespace": ns, "labels": labels if labels is not None else {"app": "app"}},
                           "protocol": protocol, "source": src, "destination": {"ip": dest_ip, "port": port}}
    if sni is not None:
        doc["connection"] = {"sni": sni}
    if protocol == "http":
        r: dict[str, Any] = {"method": method, "path": path, "host": host, "headers": headers or {}}
        if claims is not None:
            r["auth"] = {"claims": claims}
        doc["request"] = r
    return doc


def decide(policies_yaml: str, req: dict[str, Any], root: str = ROOT) -> Decision:
    policies = loads_policies(textwrap.dedent(policies_yaml), "policy.yaml")
    check = parse_request(json.dumps(req), "request.json")
    engine = Engine(policies, check.workload, root)
    return engine.decide(check.conn, check.request, check.protocol)


def ap(name: str, spec: str, *, ns: str = "default", annotations: str = "", api: str = "v1") -> str:
    """One AuthorizationPolicy document; `spec` is the YAML body under `spec:` (dedented)."""
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ") if spec.strip() else "  {}"
    meta = f"  name: {name}\n  namespace: {ns}\n" + (f"  annotations:\n{annotations}" if annotations else "")
    if not spec.strip():
        return f"apiVersion: security.istio.io/{api}\nkind: AuthorizationPolicy\nmetadata:\n{meta}spec: {{}}\n---\n"
    return f"apiVersion: security.istio.io/{api}\nkind: AuthorizationPolicy\nmetadata:\n{meta}spec:\n{body}\n---\n"
