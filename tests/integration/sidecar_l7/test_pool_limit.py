"""`max_connections_per_endpoint` / `max_pending_requests` through a real sidecar process.

The app holds every request until the test opens its gate, so the sidecar's HTTP/1.1 pool
fills: two connections (the limit) carry two requests, two more requests wait in the sidecar
(visible in `/clusters`), a fifth is refused at once with 503 `upstream_overflow`. When the
gate opens, the waiting requests ride the two connections handed back: the app never sees a
third connection (no dial, no handshake, per queued request).
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from tests.integration.sidecar.harness import admin_get, metric
from tests.integration.sidecar_l7.upstreams import one_sidecar
from tests.support.proc import Process, wait_until


class _Gated(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.accepted += 1  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        with srv.lock:  # type: ignore[attr-defined]
            srv.inflight += 1  # type: ignore[attr-defined]
        srv.gate.wait(30)  # type: ignore[attr-defined]
        with srv.lock:  # type: ignore[attr-defined]
            srv.inflight -= 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class GatedApp:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Gated)
        self.server.daemon_threads = True
        s = self.server
        s.lock, s.gate, s.accepted, s.inflight = threading.Lock(), threading.Event(), 0, 0  # type: ignore[attr-defined]
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.gate.set()  # type: ignore[attr-defined]
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatedApp, int, int, Process]]:
    app = GatedApp()
    proc = None
    try:
        proc, port, admin = one_sidecar(
            tmp_path_factory.mktemp("pool-limit"),
            f"""\
            - {{name: app, endpoints: ["{app.address}"], protocol: http1, retries: 2,
                max_connections_per_endpoint: 2, max_pending_requests: 2}}
            """,
            "- {name: app, path_prefix: /, cluster: app}")
        yield app, port, admin, proc
    finally:
        if proc is not None:
            proc.stop()
        app.close()


def _get(port: int) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("GET", "/hold", headers={"Host": "svc"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _endpoint(admin: int) -> dict:
    return json.loads(admin_get(admin, "/clusters")[1])["app"]["endpoints"][0]


def test_requests_beyond_the_limit_wait_then_ride_the_returned_connections(
        env: tuple[GatedApp, int, int, Process]) -> None:
    app, port, admin, proc = env
    results: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(_get(port))) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: app.server.inflight == 2 and _endpoint(admin)["pending_requests"] == 2,  # type: ignore[attr-defined]
               timeout=15, what="two requests at the app, two waiting in the sidecar")
    assert _endpoint(admin)["http1_connections"] == 2

    status, body = _get(port)                    # the queue is full: refused at once, not retried
    assert status == 503, body
    text = admin_get(admin, "/metrics")[1]
    assert metric(text, "secmesh_sidecar_upstream_events_total", cluster="app", event="upstream_overflow") == 1
    assert metric(text, "secmesh_sidecar_upstream_events_total", cluster="app", event="retry") == 0

    app.server.gate.set()  # type: ignore[attr-defined]
    for t in threads:
        t.join(20)
    assert sorted(s for s, _ in results) == [200] * 4
    assert app.server.accepted == 2              # type: ignore[attr-defined]  # the queued two reused them
    ep = _endpoint(admin)
    assert ep["pending_requests"] == 0 and ep["http1_connections"] == 2 and not ep["ejected"]
    # the refusal is in the access log, but an overload writes no warning line per request
    wait_until(lambda: '"reason":"upstream_overflow"' in proc.output(), timeout=10, what="the access log line")
    assert '"upstream connect failed"' not in proc.output()
