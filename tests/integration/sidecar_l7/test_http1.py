"""HTTP/1.1 through two real sidecars with curl and raw sockets: keep-alive pools, request identity headers,
L7 authz (403 naming the policy, 401 for a bad JWT, nothing reaches the app), smuggling / oversize refused
while other connections keep working, slowloris cut off, ALPN on the mTLS port (curl --http1.1/--http2)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.integration.sidecar.harness import client_context, metric
from tests.integration.sidecar_l7.conftest import CLIENT_ID, SERVER_ID
from tests.integration.sidecar_l7.wire import Raw, curl, curl_status, get, held_while_unread, mtls_args, unread_socket
from tests.support.proc import wait_until

pytestmark = pytest.mark.timeout(60)


def test_curl_http1_through_two_sidecars(mesh):
    status, body = curl_status("--http1.1", mesh.url("out-http", "/ok"))
    assert (status, body) == (200, "ok\n")
    r = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", mesh.url("out-http", "/64k"))
    assert r.stdout == "200 65536"


def test_request_identity_headers_reach_the_app(mesh):
    r = curl("--http1.1", "-H", "X-Forwarded-Client-Cert: By=evil;URI=spiffe://cluster.local/ns/x/sa/admin",
             "-H", "X-Forwarded-For: 203.0.113.9", "-H", "Connection: x-hop", "-H", "x-hop: secret",
             mesh.url("out-http", "/headers"))
    seen = json.loads(r.stdout)["headers"]
    der = x509.load_pem_x509_certificate(mesh.client_cert.read_bytes()).public_bytes(Encoding.DER)
    assert seen["x-forwarded-client-cert"] == [
        f"By={SERVER_ID};Hash={hashlib.sha256(der).hexdigest()};URI={CLIENT_ID}"]   # overwritten, never trusted
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1, 127.0.0.1"]
    assert len(seen["x-request-id"][0]) == 36
    assert "x-hop" not in seen
    r = curl("--http1.1", "-H", "x-request-id: trace-me-1", mesh.url("out-http", "/headers"))
    assert json.loads(r.stdout)["headers"]["x-request-id"] == ["trace-me-1"]


def test_keep_alive_pool_reuses_upstream_connections(mesh):
    before = mesh.app.connections
    urls = [mesh.url("out-http", "/ok")] * 20
    for _ in range(3):                               # three separate client connections …
        r = curl("--http1.1", *urls)
        assert r.stdout == "ok\n" * 20
    assert mesh.app.connections - before <= 2        # … share the sidecars' pooled connections


def test_denied_request_names_the_policy_and_never_reaches_the_app(mesh):
    seen = len(mesh.app.requests)
    r = curl("--http1.1", "-i", mesh.url("out-http", "/admin/users"))
    assert r.stdout.startswith("HTTP/1.1 403")
    assert "x-secmesh-denied-by: ns[default]-policy[deny-admin]-rule[0]" in r.stdout
    assert r.stdout.endswith("RBAC: access denied by ns[default]-policy[deny-admin]-rule[0]\n")
    assert len(mesh.app.requests) == seen
    wait_until(lambda: "policies.yaml:" in mesh.log("server"), timeout=5,
               what="the deny log line with file:line:col")
    assert metric(mesh.metrics("server"), "secmesh_sidecar_http_authz_decisions_total", decision="deny",
                  policy="ns[default]-policy[deny-admin]-rule[0]") >= 1
    # normalization: dot segments and escapes cannot get past the DENY rule
    for sneaky in ("/public/../admin", "/%61dmin"):
        assert curl_status("--http1.1", "--path-as-is", mesh.url("out-http", sneaky))[0] == 403


def test_request_authentication(mesh):
    assert curl_status("--http1.1", mesh.url("out-http", "/jwt/x"))[0] == 403          # no token: no principal
    bad = mesh.issuer.token(sub="alice", audience="other")
    status, _ = curl_status("--http1.1", "-H", f"Authorization: Bearer {bad}", mesh.url("out-http", "/headers"))
    assert status == 401
    good = mesh.issuer.token(sub="alice", audience="svc")
    r = curl("--http1.1", "-H", f"Authorization: Bearer {good}", mesh.url("out-http", "/jwt/headers"))
    assert "authorization" not in json.loads(r.stdout)["headers"]                       # token not forwarded
    assert good not in mesh.log("server") and good not in mesh.log("client")
    wait_until(lambda: '"request_principal":"https://issuer.test/alice"' in mesh.log("server"), timeout=5,
               what="the access log line with the request principal")


def test_request_bodies_stream_both_ways(mesh, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 4096)                                           # 1 MiB
    for extra in ([], ["-H", "Transfer-Encoding: chunked"], ["-H", "Expect: 100-continue"]):
        r = curl("--http1.1", "-o", str(tmp_path / "out"), "-w", "%{http_code}", "--data-binary", f"@{blob}",
                 *extra, mesh.url("out-http", "/echo"))
        assert r.stdout == "200"
        assert (tmp_path / "out").read_bytes() == blob.read_bytes()


@pytest.mark.parametrize("bad,status", [
    (b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    (b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
    (b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /ok HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
])
def test_smuggling_and_oversize_refused_while_others_keep_working(mesh, bad, status):
    port = mesh.ports["out-http"]
    good = Raw(port)
    good.send(get())
    assert good.response()[0] == 200
    evil = Raw(port)
    evil.send(bad)
    resp = evil.response()
    assert resp is not None and resp[0] == status and resp[1].get("connection") == "close"
    assert evil.closed()
    evil.close()
    good.send(get())                                  # the other keep-alive connection is untouched
    assert good.response()[0] == 200
    good.close()
    assert metric(mesh.metrics("client"), "secmesh_sidecar_http_codec_errors_total") >= 1


def test_pipelined_requests_answer_in_order(mesh):
    c = Raw(mesh.ports["out-http"])
    c.send(get("/ok") + get("/status/404") + get("/admin/x") + get("/ok"))
    got = [c.response()[0] for _ in range(4)]
    assert got == [200, 404, 403, 200]
    c.close()


def test_slowloris_is_cut_off_and_others_are_served(mesh):
    ctx = client_context(mesh.ca_pem, mesh.client_cert, mesh.client_key)
    slow = Raw(mesh.ports["in-http"], ctx=ctx, timeout=5)
    slow.send(b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
    t0 = time.monotonic()
    fast = Raw(mesh.ports["in-http"], ctx=ctx)
    fast.send(get())
    assert fast.response()[0] == 200
    resp = slow.response()                             # header_timeout is 1s on in-http
    assert resp is not None and resp[0] == 408
    assert time.monotonic() - t0 < 4
    assert slow.closed()
    slow.close()
    fast.close()


def test_mtls_port_speaks_h1_and_h2_by_alpn(mesh):
    url = f"https://localhost:{mesh.ports['in-http']}/ok"
    r = curl("--http1.1", *mtls_args(mesh), "-w", "%{http_version}", url)
    assert r.stdout == "ok\n1.1"
    r = curl("--http2", *mtls_args(mesh), "-w", "%{http_version}", url)       # h2 → the h1 app (translated)
    assert r.stdout == "ok\n2"
    r = curl("--http1.1", "--cacert", str(mesh.ca_pem), url)                   # no client cert: refused
    assert r.returncode != 0


def test_upstream_identity_is_checked(mesh):
    status, _ = curl_status("--http1.1", mesh.url("out-routed", "/impostor/x"))
    assert status == 503
    wait_until(lambda: "unexpected_peer_id" in mesh.log("client"), timeout=5, what="the upstream identity log")


def test_websocket_upgrade_tunnels_through_both_sidecars(mesh):
    c = Raw(mesh.ports["out-http"])
    c.send(b"GET /ws/chat HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    while b"\r\n\r\n" not in c.buf:
        assert c._fill()
    head, _, c.buf = c.buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    for chunk in (b"\x81\x05hello", b"raw bytes \x00\xff both ways"):
        c.send(chunk)
        want = chunk.upper()
        while len(c.buf) < len(want):
            assert c._fill()
        assert c.buf[:len(want)] == want
        c.buf = c.buf[len(want):]
    head = mesh.ws_app.heads[-1].lower()
    assert b"upgrade: websocket" in head and b"x-forwarded-client-cert:" in head   # authz'd, identified
    c.close()
    assert curl_status("--http1.1", mesh.url("out-http", "/admin/ws"))[0] == 403   # still authorized first


def test_pipelining_client_that_never_reads_cannot_grow_the_sidecar(mesh):
    """Pipelined requests behind a full socket wait: the sidecar answers the next one only when
    the client has read the previous answers, instead of buffering answer after answer for as
    long as the client keeps asking. So the count of answered requests comes to a stop (each
    16 KiB answer arrives from the app in one read, so nothing else would stop it)."""
    s = unread_socket(mesh.ports["out-http"])
    blob = b"GET /bytes/16384 HTTP/1.1\r\nHost: svc\r\n\r\n" * 100

    def ask() -> None:
        try:
            while True:
                s.send(blob)                          # keep asking, as fast as the sidecar takes it
        except BlockingIOError:
            pass

    grown = held_while_unread(mesh, s, ask, "the sidecar to stop answering an unread pipeline")
    assert grown < 16 * 1024, f"sidecar grew by {grown} KiB"
    assert curl_status(mesh.url("out-http", "/ok"))[0] == 200
