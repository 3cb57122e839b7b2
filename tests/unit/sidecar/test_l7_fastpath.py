"""The per-request shortcuts of the HTTP/1.1 path give the same bytes as the generic path.

The upstream HTTP/1.1 codec drops hop-by-hop response fields itself and marks the head
`hop_free`, so the exchange skips `forward_response_headers`; the authorizer reuses the verdict
of a memoized policy decision and the normalized path; the access log reuses the repeated parts
of its line. Each is checked against the generic computation, end to end through a downstream
session, an exchange and a pooled upstream connection on in-memory transports.
"""

from __future__ import annotations

import io
import json
import types

import pytest
import uvloop

from secmesh.sidecar import http_exchange
from secmesh.sidecar.codec import http1_client
from secmesh.sidecar.codec.headers import forward_response_headers
from secmesh.sidecar.codec.http1_client import H1ClientCodec
from secmesh.sidecar.codec.http1_response import ResponseWriter
from secmesh.sidecar.codec.stream import ConnectionError, Reason, ResponseHeaders
from secmesh.sidecar.http_proxy import HttpSession
from secmesh.sidecar.l7_config import HttpConfig
from secmesh.sidecar.l7_setup import L7Runtime
from secmesh.sidecar.pool import UpstreamConn

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    b"Connection: keep-alive\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\nhi",
    b"HTTP/1.1 201 Created\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\nX-Kept: k\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nUpgrade: h2c\r\n"
    b"Proxy-Connection: x\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
]
REQUESTS = [
    b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET /a/../b?q=1 HTTP/1.1\r\nHost: svc\r\nX-Forwarded-For: 10.0.0.9\r\nX-Request-Id: given\r\n"
    b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nX-Forwarded-Client-Cert: forged\r\n\r\nhello",
    b"PUT /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx-t: 1\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\n\r\n",
]


def _head_of(resp: bytes) -> list[tuple[bytes, bytes]]:
    """Reference parse: every field of the head, names lowered, in order."""
    lines = resp.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]


@pytest.mark.parametrize("resp", RESPONSES)
def test_hop_free_head_is_what_the_generic_strip_gives(resp):
    client = H1ClientCodec()
    client.send_request(b"GET", b"svc", b"/", b"http", [], True)
    ev = client.receive(resp)[0]
    assert type(ev) is ResponseHeaders
    generic = forward_response_headers([(n, v) for n, v in _head_of(resp) if n != b"transfer-encoding"])
    fast = ev.headers if ev.hop_free else forward_response_headers(ev.headers)
    assert fast == generic
    assert ev.hop_free == (b"x-secret" not in dict(_head_of(resp)))    # only a listing Connection stays
    w1, w2 = ResponseWriter(), ResponseWriter()
    for w, h in ((w1, fast), (w2, generic)):
        w.head(ev.status, h, head_request=False, http10=False, close=False, end_stream=ev.end_stream)
    assert w1.take() == w2.take()


def test_response_head_over_the_limits_across_reads():
    client = H1ClientCodec()
    client.send_request(b"GET", b"svc", b"/", b"http", [], True)
    events = client.receive(b"HTTP/1.1 200 OK\r\n")
    for i in range(110):
        events += client.receive(b"x-%d: v\r\n" % i)
    assert any(type(e) is ConnectionError and e.reason == Reason.HEADERS_TOO_LARGE for e in events)
    assert client.should_close and sum(type(e) is ConnectionError for e in events) == 1


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, *a, **k): return None  # noqa: ANN001, ANN002, ANN003, ANN201, E704

    def set_write_buffer_limits(self, **k) -> None: ...  # noqa: ANN003


def _pipeline():
    loop = uvloop.new_event_loop()
    lcfg = types.SimpleNamespace(name="in", kind="inbound", upstream="127.0.0.1:9", peer_ids=[], sni="",
                                 connect_timeout=5.0)
    http = HttpConfig(upstream_protocol="http1")
    rt = L7Runtime(clusters=[], listeners=[(lcfg, http)], holder=None, trust_domain=None, loop=loop)
    rt.access_log.stream, rt.access_log.enabled = io.StringIO(), True
    env = rt.env_for(lcfg, http)
    cl = env.clusters["in.upstream"]
    pool = env.clusters_mgr.pool(cl, cl.endpoints[0], "http1")
    dt = _Transport()
    s = HttpSession(env, dt, tls=True, alpn="http/1.1", peer_id="spiffe://td/ns/default/sa/client",
                    xfcc=b"By=x;URI=spiffe://td/ns/default/sa/client", client_ip="127.0.0.1",
                    engine=None, residual=None)
    return loop, env, pool, s, dt, rt


def _run(monkeypatch, *, generic: bool) -> tuple[list[bytes], list[bytes], list[dict]]:
    monkeypatch.setattr(http_exchange, "request_id", lambda: b"rid-fixed")
    if generic:   # the generic path: the codec keeps nothing from the exchange to skip
        monkeypatch.setattr(http1_client.H1ClientCodec, "_head_fields", _generic_head_fields)
    loop, env, pool, s, dt, rt = _pipeline()
    ups, downs = [], []
    pairs = list(zip(REQUESTS, RESPONSES)) + [(REQUESTS[2], RESPONSES[5])]   # (a 5xx to a POST: no retry)
    for req, resp in pairs * 2:
        ut = _Transport()
        conn = UpstreamConn(pool)
        conn.connection_made(ut)
        conn.start(H1ClientCodec())
        env.flusher.flush()
        pool.idle.append(conn)
        s.data_received(req)
        ups.append(b"".join(ut.out))
        conn.data_received(resp)
        downs.append(b"".join(dt.out))
        dt.out.clear()
    rt.access_log.flush()
    lines = [json.loads(x) for x in rt.access_log.stream.getvalue().splitlines()]
    for d in lines:
        d["ts"] = d["duration_ms"] = 0
    loop.close()
    return ups, downs, lines


_orig_head_fields = http1_client.H1ClientCodec._head_fields


def _generic_head_fields(self) -> bool:  # noqa: ANN001
    ok = _orig_head_fields(self)
    self._hop_free = False
    return ok


def test_fast_and_generic_paths_write_the_same_bytes(monkeypatch):
    fast = _run(monkeypatch, generic=False)
    monkeypatch.undo()
    generic = _run(monkeypatch, generic=True)
    assert fast == generic
    ups, downs, lines = fast
    assert b"x-drop" not in ups[1].lower() and b"forged" not in ups[2] and b"rid-fixed" in ups[0]
    assert b"x-secret" not in downs[2].lower() and b"x-kept: k" in downs[2]
    assert b"keep-alive" not in downs[1] and b"upgrade" not in downs[3].lower()
    assert len(lines) == len(ups) and {d["status"] for d in lines} >= {200, 201, 204}


_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["td/ns/default/sa/client"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/ok", "/b"]}}]
"""


def test_memoized_verdicts_match_fresh_ones():
    from secmesh.policy.attrs import ConnAttrs
    from secmesh.policy.engine import Engine
    from secmesh.policy.load import loads_policies
    from secmesh.policy.model import Workload
    from secmesh.sidecar.authz_l7 import RequestAuthorizer
    from secmesh.sidecar.codec.stream import RequestHeaders

    engine = Engine(loads_policies(_POLICY), Workload("default", {}))
    residual = engine.decide_connection(ConnAttrs("spiffe://td/ns/default/sa/client", "127.0.0.1", None,
                                                  "127.0.0.1", 80)).residual
    cases = [(b"GET", b"/ok"), (b"GET", b"/a/../b?x=1"), (b"POST", b"/ok"), (b"GET", b"/other"),
             (b"GET", b"/%00x"), (b"GET", b"/ok")]
    memo = RequestAuthorizer(now=lambda: 0.0)
    for method, path in cases * 3:
        req = RequestHeaders(1, method, b"svc", path, b"https", [(b"host", b"svc")], True)
        got = memo.check(req, engine, residual)
        want = RequestAuthorizer(now=lambda: 0.0).check(req, engine, residual)      # nothing memoized yet
        assert got == want
        assert got.allowed == (method == b"GET" and path in (b"/ok", b"/a/../b?x=1"))
        assert got.status == (400 if path == b"/%00x" else 0 if got.allowed else 403)
