"""`protocol: auto` through two real sidecars: HTTP/1.1, h2 and raw TCP on one port, chosen per connection.

    curl / raw client ──plain──▶ client sidecar (outbound, auto) ══mTLS══▶ server sidecar (inbound, auto,
        Istio policies) ──▶ HTTP app (routes) | echo backend | server-first (banner) backend

Server listeners (policies see the workload ports 9001..9003):
- `in-a`: HTTP to the app with a per-request DENY for `/admin*` (principal `client`), TCP to the echo backend.
- `in-b`: TCP to a server-first backend (it greets first; the client sends nothing) → detection timeout.
- `in-c`: ALLOW only `paths: [/ok]` (HTTP-only): HTTP /ok passes, other paths 403, TCP is refused.
"""

from __future__ import annotations

import json
import socket
import socketserver
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.sidecar.harness import (
    Backend, admin_get, client_context, echo_roundtrip, first_read, metric, recv_exact, tls_connect, wait_ready)
from tests.integration.sidecar.pki import TestCA, sa
from tests.integration.sidecar_l7.apps import HttpApp
from tests.integration.sidecar_l7.wire import Raw, curl, curl_status, get, mtls_args
from tests.support.proc import Process, free_port, start_cli, wait_until

pytestmark = pytest.mark.timeout(90)

SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
BANNER = b"220 server-first ready\r\n"

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {ports: ["9001"], paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-peers, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client", "cluster.local/ns/default/sa/tcp-client"]}}]
    to: [{operation: {ports: ["9001", "9002"]}}]
  - to: [{operation: {ports: ["9003"], paths: ["/ok"]}}]
"""

def _start(d: Path, name: str, config: Path) -> tuple[Process, int]:
    admin = free_port()
    proc = start_cli("sidecar", "--admin", f"127.0.0.1:{admin}", "--config", str(config), tmp_path=d, name=name)
    try:
        wait_ready(admin, proc)
    except AssertionError:
        proc.stop()
        raise AssertionError(f"{name} not ready; log:\n{proc.output()[-3000:]}") from None
    return proc, admin


class _Greeter(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(BANNER)          # server-first: speak before the client does
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class ServerFirst:
    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Greeter)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AutoMesh:
    dir: Path
    ca_pem: Path
    client_cert: Path
    client_key: Path
    tcp_cert: Path
    tcp_key: Path
    app: HttpApp
    echo: Backend
    greeter: ServerFirst
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Process] = field(default_factory=dict)
    admin: dict[str, int] = field(default_factory=dict)

    def metrics(self, which: str) -> str:
        return admin_get(self.admin[which], "/metrics")[1]

    def tcp_client(self, listener: str) -> socket.socket:
        """A raw mTLS client (ID tcp-client, no ALPN) straight to a server listener."""
        ctx = client_context(self.ca_pem, self.tcp_cert, self.tcp_key)
        return tls_connect(self.ports[listener], ctx)


def _server_config(m: AutoMesh, cert: Path, key: Path) -> str:
    p = m.ports
    return textwrap.dedent(f"""\
        trust_domain: cluster.local
        workers: 1
        policies: {m.dir / 'policies.yaml'}
        workload: {{namespace: default, labels: {{app: server}}}}
        certs: {{source: file, file: {{cert: {cert}, key: {key}, bundle: {m.ca_pem}}}}}
        clusters:
          - {{name: app, endpoints: ["{m.app.address}"], protocol: http1}}
        listeners:
          - name: in-a
            address: 127.0.0.1:{p['in-a']}
            upstream: {m.echo.address}
            workload_port: 9001
            protocol: auto
            protocol_detection_timeout: 1s
            http: {{routes: [{{name: app, path_prefix: /, cluster: app}}]}}
          - name: in-b
            address: 127.0.0.1:{p['in-b']}
            upstream: {m.greeter.address}
            workload_port: 9002
            protocol: auto
            protocol_detection_timeout: 100ms
          - name: in-c
            address: 127.0.0.1:{p['in-c']}
            upstream: {m.echo.address}
            workload_port: 9003
            protocol: auto
            protocol_detection_timeout: 1s
            http: {{routes: [{{name: app, path_prefix: /, cluster: app}}]}}
        """)


def _client_config(m: AutoMesh, cert: Path, key: Path) -> str:
    p = m.ports
    return textwrap.dedent(f"""\
        trust_domain: cluster.local
        workers: 1
        certs: {{source: file, file: {{cert: {cert}, key: {key}, bundle: {m.ca_pem}}}}}
        listeners:
          - name: out-a
            kind: outbound
            address: 127.0.0.1:{p['out-a']}
            upstream: 127.0.0.1:{p['in-a']}
            peer_ids: ["{SERVER_ID}"]
            protocol: auto
            protocol_detection_timeout: 1s
          - name: out-b
            kind: outbound
            address: 127.0.0.1:{p['out-b']}
            upstream: 127.0.0.1:{p['in-b']}
            peer_ids: ["{SERVER_ID}"]
            protocol: auto
        """)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AutoMesh]:
    d = tmp_path_factory.mktemp("auto")
    ca = TestCA("cluster.local")
    ca_pem = ca.write(d, "ca")
    scert, skey = ca.issue(sa("default", "server")).write(d, "server")
    ccert, ckey = ca.issue(sa("default", "client")).write(d, "client")
    tcert, tkey = ca.issue(sa("default", "tcp-client")).write(d, "tcp")
    (d / "policies.yaml").write_text(POLICIES)
    m = AutoMesh(d, ca_pem, ccert, ckey, tcert, tkey, HttpApp("app"), Backend("echo"), ServerFirst())
    for name in ("in-a", "in-b", "in-c", "out-a", "out-b"):
        m.ports[name] = free_port()
    try:
        (d / "server.yaml").write_text(_server_config(m, scert, skey))
        (d / "client.yaml").write_text(_client_config(m, ccert, ckey))
        m.procs["server"], m.admin["server"] = _start(d, "server-sidecar", d / "server.yaml")
        m.procs["client"], m.admin["client"] = _start(d, "client-sidecar", d / "client.yaml")
        yield m
    finally:
        for p in m.procs.values():
            p.stop()
        m.app.close()
        m.echo.close()
        m.greeter.close()


def _detected(m: AutoMesh, which: str, listener: str, protocol: str) -> float:
    return metric(m.metrics(which), "secmesh_sidecar_protocol_detected_total", listener=listener, protocol=protocol)


def test_http1_and_h2_through_the_pair_with_per_request_authz(mesh: AutoMesh) -> None:
    url = f"http://127.0.0.1:{mesh.ports['out-a']}"
    r = curl("--http1.1", "-w", "%{http_code} %{http_version}", url + "/ok")
    assert r.stdout == "ok\n200 1.1", r.stderr
    r = curl("--http2-prior-knowledge", "-w", "%{http_code} %{http_version}", url + "/ok")   # the h2 preface
    assert r.stdout == "ok\n200 2", r.stderr
    assert curl_status("--http1.1", url + "/admin")[0] == 403             # per-request DENY on the server
    assert curl_status("--http2-prior-knowledge", url + "/admin/x")[0] == 403
    assert ("GET", "/admin") not in mesh.app.requests
    assert _detected(mesh, "client", "out-a", "http1") >= 2
    assert _detected(mesh, "client", "out-a", "http2") >= 2
    # the client sidecar's pool reaches in-a with ALPN: decided without sniffing
    assert _detected(mesh, "server", "in-a", "http1") + _detected(mesh, "server", "in-a", "http2") >= 1


def test_curl_mtls_straight_to_the_auto_port_uses_alpn(mesh: AutoMesh) -> None:
    url = f"https://127.0.0.1:{mesh.ports['in-a']}"
    before = _detected(mesh, "server", "in-a", "http2")
    r = curl("--http2", *mtls_args(mesh), "-w", "%{http_code} %{http_version}", url + "/ok")
    assert r.stdout == "ok\n200 2", r.stderr
    r = curl("--http1.1", *mtls_args(mesh), "-w", "%{http_code} %{http_version}", url + "/ok")
    assert r.stdout == "ok\n200 1.1", r.stderr
    assert curl_status("--http2", *mtls_args(mesh), url + "/admin")[0] == 403
    assert _detected(mesh, "server", "in-a", "http2") >= before + 2


def test_a_request_line_split_across_reads_waits_and_is_http(mesh: AutoMesh) -> None:
    """No ALPN, and the first read is only `GE`: the sidecar waits for the rest, then serves HTTP."""
    before = _detected(mesh, "server", "in-a", "http1")
    raw = Raw(mesh.ports["in-a"], ctx=client_context(mesh.ca_pem, mesh.client_cert, mesh.client_key))
    try:
        raw.send(b"GE")
        mesh.metrics("server")                        # a round trip elsewhere: the two records arrive apart
        raw.send(b"T /ok HTTP/1.1\r\nHost: svc\r\n\r\n")
        answer = raw.response()
        assert answer is not None and answer[0] == 200 and answer[2] == b"ok\n"
        raw.send(get("/admin"))                       # same connection, next request: per-request DENY
        answer = raw.response()
        assert answer is not None and answer[0] == 403
    finally:
        raw.close()
    assert _detected(mesh, "server", "in-a", "http1") == before + 1


def test_raw_tcp_on_the_same_port_is_echoed(mesh: AutoMesh) -> None:
    before = _detected(mesh, "server", "in-a", "tcp")
    payload = b"\x00\x01\x02binary\xff" * 100
    with mesh.tcp_client("in-a") as s:
        assert echo_roundtrip(s, payload) == payload
        assert echo_roundtrip(s, b"GET / HTTP/1.1\r\n\r\n") == b"GET / HTTP/1.1\r\n\r\n"   # later bytes: opaque
    assert _detected(mesh, "server", "in-a", "tcp") == before + 1

    def logged() -> list[dict]:
        return [json.loads(line) for line in mesh.procs["server"].output().splitlines()
                if '"msg":"connection"' in line and '"listener":"in-a"' in line
                and "sa/tcp-client" in line]
    wait_until(lambda: logged(), timeout=10, what="the connection's log line")
    assert logged()[-1]["protocol"] == "tcp"


def test_a_partial_http_looking_first_read_still_ends_as_tcp(mesh: AutoMesh) -> None:
    """`GET` alone could still become a request line: the sidecar waits, then the timeout makes it TCP."""
    before = _detected(mesh, "server", "in-a", "timeout_tcp")
    with mesh.tcp_client("in-a") as s:
        s.sendall(b"GET")
        assert recv_exact(s, 3) == b"GET"            # echoed once the detection timeout has passed
        assert echo_roundtrip(s, b"\x00more") == b"\x00more"
    assert _detected(mesh, "server", "in-a", "timeout_tcp") == before + 1


def test_server_first_backend_works_through_the_timeout(mesh: AutoMesh) -> None:
    with socket.create_connection(("127.0.0.1", mesh.ports["out-b"]), timeout=10) as s:
        assert recv_exact(s, len(BANNER)) == BANNER   # nobody spoke first: both sidecars time out to TCP
        assert echo_roundtrip(s, b"HELO me\r\n") == b"HELO me\r\n"
    assert _detected(mesh, "client", "out-b", "timeout_tcp") >= 1
    assert _detected(mesh, "server", "in-b", "timeout_tcp") >= 1


def test_tcp_against_http_only_allow_rules_is_refused(mesh: AutoMesh) -> None:
    url = f"https://127.0.0.1:{mesh.ports['in-c']}"
    assert curl_status("--http1.1", *mtls_args(mesh), url + "/ok") == (200, "ok\n")   # HTTP on in-c: per request
    assert curl_status("--http2", *mtls_args(mesh), url + "/64k")[0] == 403          # no ALLOW rule matches
    server = mesh.procs["server"]
    echo_before = mesh.echo.connections
    denied = metric(mesh.metrics("server"), "secmesh_sidecar_authz_decisions_total", listener="in-c",
                    decision="deny", reason="needs_request_no_l7")
    with mesh.tcp_client("in-c") as s:
        s.sendall(b"\x00\x01\x02\x03")
        assert first_read(s) in (b"", None)          # closed: the rules could only be decided per request
    wait_until(lambda: "protocol auto sniffed TCP" in server.output(), timeout=10, what="refusal log line")
    text = mesh.metrics("server")
    assert metric(text, "secmesh_sidecar_authz_decisions_total", listener="in-c", decision="deny",
                  reason="needs_request_no_l7") == denied + 1
    assert metric(text, "secmesh_sidecar_connections_total", listener="in-c", result="denied") >= 1
    assert mesh.echo.connections == echo_before       # nothing reached the TCP upstream


def test_plaintext_http_on_a_permissive_auto_port(mesh: AutoMesh) -> None:
    """No PeerAuthentication: PERMISSIVE. A plaintext request is sniffed directly (no TLS) as HTTP."""
    status, body = curl_status("--http1.1", f"http://127.0.0.1:{mesh.ports['in-c']}/ok")
    assert (status, body) == (200, "ok\n")
