"""Two real sidecars in the L7 topology, started once per module, plus the apps behind them.

    client ──plain h1/h2c──▶ client sidecar (outbound, protocol http) ══mTLS (ALPN h2/http1.1)══▶
        server sidecar (inbound, protocol http, Istio policies + RequestAuthentication) ──▶ HTTP app / gRPC app

`L7Mesh` writes both YAML configs, starts `python -m secmesh sidecar --config …` twice, waits
for /ready, and stops both at the end (by PID, via `tests.support.proc`).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.sidecar.harness import admin_get, start_sidecar
from tests.integration.sidecar.pki import TestCA, sa
from tests.integration.sidecar_l7.apps import GrpcApp, HttpApp, TunnelApp
from tests.support.proc import Process, free_port
from tests.support.tokens import TokenIssuer

SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
ISSUER = "https://issuer.test"

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*", "/test.Echo/Admin"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/jwt*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: "%s"
    audiences: [svc]
    jwks: '%s'
"""


@dataclass
class L7Mesh:
    dir: Path
    ca_pem: Path
    client_cert: Path
    client_key: Path
    issuer: TokenIssuer
    app: HttpApp
    app2: HttpApp
    grpc_app: GrpcApp
    ws_app: TunnelApp
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Process] = field(default_factory=dict)
    admin: dict[str, int] = field(default_factory=dict)

    def url(self, listener: str, path: str = "/ok") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def metrics(self, which: str) -> str:
        return admin_get(self.admin[which], "/metrics")[1]

    def log(self, which: str) -> str:
        return self.procs[which].output()

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


def _server_config(m: L7Mesh, cert: Path, key: Path) -> str:
    p = m.ports
    return textwrap.dedent(f"""\
        trust_domain: cluster.local
        workers: 1
        policies: {m.dir / 'policies.yaml'}
        workload: {{namespace: default, labels: {{app: server}}}}
        certs: {{source: file, file: {{cert: {cert}, key: {key}, bundle: {m.ca_pem}}}}}
        clusters:
          - {{name: app, endpoints: ["{m.app.address}"], protocol: http1}}
          - {{name: ws, endpoints: ["{m.ws_app.address}"], protocol: http1}}
        listeners:
          - name: in-http
            kind: inbound
            address: 127.0.0.1:{p['in-http']}
            upstream: {m.app.address}
            protocol: http
            http:
              header_timeout: 1s
              routes:
                - {{name: ws, path_prefix: /ws, cluster: ws}}
                - {{name: app, path_prefix: /, cluster: app}}
          - name: in-grpc
            kind: inbound
            address: 127.0.0.1:{p['in-grpc']}
            upstream: {m.grpc_app.address}
            protocol: http
        """)


def _client_config(m: L7Mesh, cert: Path, key: Path) -> str:
    p = m.ports
    dead = free_port()
    return textwrap.dedent(f"""\
        trust_domain: cluster.local
        workers: 1
        certs: {{source: file, file: {{cert: {cert}, key: {key}, bundle: {m.ca_pem}}}}}
        clusters:
          - name: mesh-http
            endpoints: ["127.0.0.1:{p['in-http']}"]
            tls: true
            peer_ids: ["{SERVER_ID}"]
          - name: two-apps
            endpoints: ["{m.app.address}", "{m.app2.address}"]
          - name: with-dead
            endpoints: ["127.0.0.1:{dead}", "{m.app2.address}"]
            outlier_consecutive_failures: 1
            connect_timeout: 1s
          - name: wrong-id
            endpoints: ["127.0.0.1:{p['in-http']}"]
            tls: true
            peer_ids: ["spiffe://cluster.local/ns/default/sa/someone-else"]
            retries: 0
        listeners:
          - name: out-http
            kind: outbound
            address: 127.0.0.1:{p['out-http']}
            upstream: 127.0.0.1:{p['in-http']}
            peer_ids: ["{SERVER_ID}"]
            protocol: http
          - name: out-grpc
            kind: outbound
            address: 127.0.0.1:{p['out-grpc']}
            upstream: 127.0.0.1:{p['in-grpc']}
            peer_ids: ["{SERVER_ID}"]
            protocol: http
          - name: out-routed
            kind: outbound
            address: 127.0.0.1:{p['out-routed']}
            upstream: 127.0.0.1:{p['in-http']}
            peer_ids: ["{SERVER_ID}"]
            protocol: http
            http:
              routes:
                - {{name: lb, path_prefix: /lb/, cluster: two-apps}}
                - {{name: canary, headers: [{{name: x-canary, exact: "1"}}], cluster: two-apps}}
                - {{name: dead, path_prefix: /dead/, cluster: with-dead}}
                - {{name: impostor, path_prefix: /impostor/, cluster: wrong-id}}
                - {{name: fast, path_prefix: /sleep/, cluster: two-apps, timeout: 300ms}}
                - {{name: mesh, path_prefix: /, cluster: mesh-http}}
        """)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[L7Mesh]:
    d = tmp_path_factory.mktemp("l7")
    ca = TestCA("cluster.local")
    ca_pem = ca.write(d, "ca")
    scert, skey = ca.issue(sa("default", "server")).write(d, "server")
    ccert, ckey = ca.issue(sa("default", "client")).write(d, "client")
    issuer = TokenIssuer(ISSUER)
    (d / "policies.yaml").write_text(POLICIES % (ISSUER, json.dumps(issuer.jwks())))
    m = L7Mesh(d, ca_pem, ccert, ckey, issuer, HttpApp("app1"), HttpApp("app2"), GrpcApp(), TunnelApp())
    for name in ("in-http", "in-grpc", "out-http", "out-grpc", "out-routed"):
        m.ports[name] = free_port()
    try:
        (d / "server.yaml").write_text(_server_config(m, scert, skey))
        (d / "client.yaml").write_text(_client_config(m, ccert, ckey))
        m.procs["server"], m.admin["server"] = start_sidecar(d, "server-sidecar", "--config", str(d / "server.yaml"))
        m.procs["client"], m.admin["client"] = start_sidecar(d, "client-sidecar", "--config", str(d / "client.yaml"))
        yield m
    finally:
        m.stop()
        m.app.close()
        m.app2.close()
        m.grpc_app.close()
        m.ws_app.close()
