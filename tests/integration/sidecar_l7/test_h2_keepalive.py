"""HTTP/2 keepalive PINGs to upstreams (Envoy's connection_keepalive) through a real sidecar.

The upstream is a real h2c server (`upstreams.H2Upstream`) that can go silent on its open
connections without closing them — the failure a keepalive exists for. The sidecar must PING,
give up after `h2_keepalive_timeout`, abort the connection (a request in flight on it is retried
on a fresh connection) and count it. Answered PINGs keep a quiet connection open.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Iterator

import pytest

from secmesh.sidecar.upstream import DEAD, PING, WAIT, Keepalive
from tests.integration.sidecar.harness import admin_get, metric
from tests.integration.sidecar_l7.upstreams import H2Upstream, one_sidecar
from tests.support.proc import wait_until

INTERVAL, TIMEOUT = 0.3, 0.5


class Env:
    def __init__(self, up: H2Upstream, port: int, admin: int) -> None:
        self.up, self.port, self.admin = up, port, admin

    def get(self, path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Host": "svc"})
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read()

    def metric(self, name: str, **labels: str) -> float:
        return metric(admin_get(self.admin, "/metrics")[1], name, cluster="h2", **labels)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    up = H2Upstream()
    proc = None
    try:
        proc, port, admin = one_sidecar(
            tmp_path_factory.mktemp("h2-keepalive"),
            f"""\
            - {{name: h2, endpoints: ["{up.address}"], protocol: http2, outlier_consecutive_failures: 0,
                h2_keepalive_interval: {int(INTERVAL * 1000)}ms, h2_keepalive_timeout: {int(TIMEOUT * 1000)}ms}}
            """,
            "- {name: h2, path_prefix: /, cluster: h2}")
        yield Env(up, port, admin)
    finally:
        if proc is not None:
            proc.stop()
        up.close()


def test_answered_pings_keep_a_quiet_connection(env: Env) -> None:
    assert env.get("/a") == (200, b"h2 conn 0\n")
    first = env.up.conns[0]
    wait_until(lambda: first.pings >= 3, timeout=10, what="keepalive PINGs on the quiet connection")
    assert first.closed_at is None
    assert env.metric("secmesh_sidecar_upstream_events_total", event="h2_keepalive_timeout") == 0
    assert env.get("/b") == (200, b"h2 conn 0\n")        # still the same connection
    assert len(env.up.conns) == 1


def test_silent_peer_is_cut_and_the_request_in_flight_retried(env: Env) -> None:
    assert env.get("/warm") == (200, b"h2 conn 0\n")
    env.up.freeze()
    t0 = time.monotonic()
    status, body = env.get("/in-flight")                 # sent on the frozen connection, then retried
    elapsed = time.monotonic() - t0
    assert (status, body) == (200, b"h2 conn 1\n")
    assert elapsed < INTERVAL + TIMEOUT + 2.0, elapsed   # the keepalive, not the 15 s request timeout
    wait_until(lambda: env.up.conns[0].closed_at is not None, timeout=5, what="the dead connection closed")
    assert env.metric("secmesh_sidecar_upstream_events_total", event="h2_keepalive_timeout") == 1
    assert env.metric("secmesh_sidecar_upstream_events_total", event="retry") >= 1
    assert env.get("/next") == (200, b"h2 conn 1\n")     # the fresh connection serves the next ones
    assert len(env.up.conns) == 2


def test_idle_silent_connection_is_closed_after_interval_plus_timeout(env: Env) -> None:
    assert env.get("/warm2")[0] == 200
    n = len(env.up.conns)
    current = env.up.conns[-1]
    before = env.metric("secmesh_sidecar_upstream_events_total", event="h2_keepalive_timeout")
    env.up.freeze()
    t0 = time.monotonic()
    wait_until(lambda: current.closed_at is not None, timeout=10, what="the idle dead connection closed")
    assert current.closed_at is not None and current.closed_at - t0 < INTERVAL + TIMEOUT + 1.5
    assert env.metric("secmesh_sidecar_upstream_events_total", event="h2_keepalive_timeout") == before + 1
    assert env.get("/after") == (200, b"h2 conn %d\n" % n)   # a new connection, no failed request
    assert len(env.up.conns) == n + 1


# --- the pure decision (upstream.Keepalive) ----------------------------------------------------

def test_keepalive_decisions() -> None:
    ka = Keepalive(10.0, 2.0)
    assert ka.step(now=5.0, last_rx=0.0) == (WAIT, 5.0)      # heard from 5 s ago: wait the rest
    assert ka.step(now=10.0, last_rx=0.0) == (PING, 2.0)     # quiet for the interval: PING
    assert ka.step(now=11.0, last_rx=0.0) == (WAIT, 1.0)     # unanswered yet: wait out the timeout
    assert ka.step(now=12.0, last_rx=0.0) == (DEAD, 0.0)


def test_any_frame_after_the_ping_counts_as_an_answer() -> None:
    ka = Keepalive(10.0, 2.0)
    assert ka.step(now=10.0, last_rx=0.0)[0] == PING
    assert ka.step(now=12.0, last_rx=10.5) == (WAIT, 8.5)    # DATA (or the ACK) arrived at 10.5
    assert ka.pings == 1
