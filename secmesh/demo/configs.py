"""The files and command lines of the demo's processes, built from a `Layout`.

The orders sidecar is authorized by Istio policies (PeerAuthentication STRICT mesh-wide, an
ALLOW for the frontend, a DENY for the intruder, a DENY of `/admin*` for everyone) when this
build's sidecar understands policy files; otherwise by its static `allow_principals` list. Its
listener speaks HTTP (L7): principal-only rules are decided at connection time, so the intruder
is refused right after its handshake; the path rule is decided per request (403 naming it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from secmesh.demo.layout import APP_PORT, APP_PROTOCOL, NAMESPACE, TRUST_DOMAIN, Layout, Pod, principal
from secmesh.demo.procs import secmesh_argv

ALLOW_POLICY = "orders-allow-frontend"
DENY_POLICY = "orders-deny-intruder"
PATH_POLICY = "orders-deny-admin"
FORBIDDEN_PATH = "/admin/orders"          # what the forbidden-path step asks for

POLICIES = f"""\
# Written by `secmesh demo`: what the orders sidecar enforces.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {ALLOW_POLICY}, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{principal('frontend')}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {DENY_POLICY}, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{principal('intruder')}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {PATH_POLICY}, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
"""


def sidecar_supports_policies() -> bool:
    """True when this build's sidecar config has `policies` and `workload` (the Istio policy engine)."""
    from secmesh.sidecar.config import SidecarConfig

    names = {f.name for f in dataclasses.fields(SidecarConfig)}
    return {"policies", "workload"} <= names


def ca_serve_supports_workers() -> bool:
    from secmesh.cli.ca import cli as ca_cli

    serve = ca_cli.commands.get("serve")
    return serve is not None and any(p.name == "workers" for p in serve.params)


def ca_serve_argv(layout: Layout) -> list[str]:
    argv = secmesh_argv("ca", "serve", "--dir", str(layout.ca_dir), "--listen", f"127.0.0.1:{layout.ca_port}",
                        "--jwks", str(layout.jwks), "--admin", f"127.0.0.1:{layout.ca_admin}")
    if ca_serve_supports_workers():
        argv += ["--workers", "1"]
    return argv


def agent_argv(layout: Layout, pod: Pod, ttl: str) -> list[str]:
    """One agent per pod: its own token file and socket, short-lived leaves so rotation is visible."""
    return secmesh_argv("agent", "--socket", str(pod.agent_socket), "--socket-mode", "0600",
                        "--ca-address", f"127.0.0.1:{layout.ca_port}", "--ca-root", str(layout.roots_pem),
                        "--jwks", str(layout.jwks), "--token-file", str(pod.token_file),
                        "--trust-domain", TRUST_DOMAIN, "--ttl", ttl, "--backoff-initial", "200ms",
                        "--backoff-max", "1s", "--admin", f"127.0.0.1:{pod.agent_admin}")


def sidecar_argv(pod: Pod) -> list[str]:
    return secmesh_argv("sidecar", "--config", str(pod.sidecar_config), "--workers", "1")


def _common(pod: Pod) -> dict:
    return {
        "trust_domain": TRUST_DOMAIN, "workers": 1, "log_level": "info", "access_log": True, "drain_timeout": "1s",
        "admin": {"address": f"127.0.0.1:{pod.sidecar_admin}", "enabled": True},
        "certs": {"source": "sds", "sds": {"socket": str(pod.agent_socket), "backoff_initial": "200ms",
                                           "backoff_max": "2s"}},
    }


def frontend_sidecar(layout: Layout) -> dict:
    """Plaintext from the frontend app (curl) → mTLS to orders, which must present orders' SPIFFE ID."""
    doc = _common(layout.frontend)
    doc["listeners"] = [{"name": "outbound-orders", "kind": "outbound", "address": f"127.0.0.1:{layout.frontend.port}",
                         "upstream": f"{layout.orders_host}:{layout.orders.port}",
                         "peer_ids": [layout.orders.spiffe_id]}]
    return doc


def orders_sidecar(layout: Layout, policies: bool) -> dict:
    """mTLS only (STRICT) → HTTP (L7, so the app gets XFCC) → the orders app; who may connect is
    decided right after the handshake, what each request may do before it is routed."""
    doc = _common(layout.orders)
    listener = {"name": "inbound-orders", "kind": "inbound", "address": f"{layout.orders_host}:{layout.orders.port}",
                "upstream": f"127.0.0.1:{layout.backend_port}", "protocol": APP_PROTOCOL}
    if policies:
        doc["policies"] = str(layout.policies)
        doc["workload"] = {"namespace": NAMESPACE, "labels": {"app": "orders"}}
        listener.update(workload_port=APP_PORT)
    else:
        listener.update(mtls_mode="STRICT", allow_principals=[layout.frontend.spiffe_id])
    doc["listeners"] = [listener]
    return doc


def write_all(layout: Layout, policies: bool) -> None:
    """Sidecar configs (JSON is YAML) and, in policy mode, the policy file."""
    layout.frontend.sidecar_config.write_text(json.dumps(frontend_sidecar(layout), indent=2) + "\n")
    layout.orders.sidecar_config.write_text(json.dumps(orders_sidecar(layout, policies), indent=2) + "\n")
    if policies:
        (layout.policies / "orders.yaml").write_text(POLICIES)


def policy_file(layout: Layout) -> Path:
    return layout.policies / "orders.yaml"
