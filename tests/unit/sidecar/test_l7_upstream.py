"""Cluster cores (pure): round robin, least request (P2C), outlier ejection, retry budget, retry policy."""

from __future__ import annotations

import random

import pytest

from secmesh.sidecar.l7_config import ClusterConfig
from secmesh.sidecar.upstream import ClusterState
from secmesh.sidecar.http_meta import grpc_timeout, request_id


def cluster(n: int = 3, **kw) -> ClusterState:
    return ClusterState(ClusterConfig(name="c", endpoints=[f"127.0.0.1:{9000 + i}" for i in range(n)], **kw),
                        rng=random.Random(7))


def test_round_robin_cycles_and_skips_excluded():
    c = cluster()
    picks = [c.balancer.pick(0.0).port for _ in range(6)]
    assert sorted(picks[:3]) == [9000, 9001, 9002] and picks[:3] == picks[3:]
    first = c.endpoints[0]
    assert all(c.balancer.pick(0.0, [first]) is not first for _ in range(10))


def test_least_request_prefers_the_idle_endpoint():
    c = cluster(2, lb_policy="least_request")
    busy, idle = c.endpoints
    busy.active = 10
    assert all(c.balancer.pick(0.0) is idle for _ in range(20))


def test_outlier_ejection_and_return():
    c = cluster(4, outlier_consecutive_failures=3, outlier_base_ejection=10.0, outlier_max_ejection_percent=50)
    bad = c.endpoints[0]
    assert not c.outlier.failure(bad, 0.0) and not c.outlier.failure(bad, 0.0)
    assert c.outlier.failure(bad, 0.0)                      # third in a row
    assert bad.ejected(5.0) and not bad.ejected(10.0)
    assert all(c.balancer.pick(5.0) is not bad for _ in range(12))
    assert any(c.balancer.pick(11.0) is bad for _ in range(12))   # back after base × 1
    for _ in range(3):
        c.outlier.failure(bad, 11.0)
    assert bad.times_ejected == 2 and bad.ejected(30.0) and not bad.ejected(31.0)   # base × 2


def test_success_resets_the_count():
    c = cluster(2, outlier_consecutive_failures=2)
    ep = c.endpoints[0]
    c.outlier.failure(ep, 0.0)
    c.outlier.success(ep)
    assert not c.outlier.failure(ep, 0.0)


def test_max_ejection_percent_and_panic():
    c = cluster(2, outlier_consecutive_failures=1, outlier_max_ejection_percent=10)
    a, b = c.endpoints
    assert c.outlier.failure(a, 0.0)                        # one may always be ejected
    assert not c.outlier.failure(b, 0.0)                    # but not more than the cap
    c2 = cluster(1, outlier_consecutive_failures=1)
    only = c2.endpoints[0]
    c2.outlier.failure(only, 0.0)
    assert c2.balancer.pick(1.0) is only                    # panic: all ejected → still used


def test_retry_budget():
    c = cluster(retry_budget_percent=20.0, retry_min_concurrency=2)
    b = c.budget
    b.requests = 100
    b.retries = 19
    assert b.allows()
    b.retries = 20
    assert not b.allows()
    b.requests, b.retries = 1, 1
    assert b.allows()                                       # the floor
    b.retries = 2
    assert not b.allows()


@pytest.mark.parametrize("method,sent,status,ok", [
    (b"POST", False, None, True),        # connect failure: nothing reached the app
    (b"POST", True, None, False),        # reset after sending a non-idempotent request
    (b"POST", True, 503, False),
    (b"GET", True, None, True),
    (b"GET", True, 503, True),
    (b"PUT", True, 502, True),
    (b"GET", True, 404, False),
])
def test_retry_policy(method, sent, status, ok):
    c = cluster()
    assert c.may_retry(method, attempt=1, max_retries=2, sent=sent, status=status, replayable=True) is ok


def test_no_retry_past_the_limit_or_without_replay():
    c = cluster()
    assert not c.may_retry(b"GET", attempt=3, max_retries=2, sent=False, status=None, replayable=True)
    assert not c.may_retry(b"GET", attempt=1, max_retries=2, sent=False, status=None, replayable=False)


@pytest.mark.parametrize("value,seconds", [(b"100m", 0.1), (b"2S", 2.0), (b"1M", 60.0), (b"5H", 18000.0),
                                           (b"250000u", 0.25), (b"7n", 7e-9), (b"x", None), (b"10x", None),
                                           (b"1234567890S", None)])
def test_grpc_timeout(value, seconds):
    got = grpc_timeout([(b"grpc-timeout", value)])
    assert got == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("kw,message", [
    ({"endpoints": []}, "at least one endpoint"),
    ({"endpoints": ["nohost"]}, "HOST:PORT"),
    ({"tls": True}, "peer_ids"),
    ({"peer_ids": ["not-spiffe"]}, "peer_ids"),
    ({"protocol": "spdy"}, "protocol"),
    ({"lb_policy": "random"}, "lb_policy"),
    ({"retry_budget_percent": 150}, "percentages"),
])
def test_bad_clusters_are_refused(kw, message):
    args = {"name": "c", "endpoints": ["127.0.0.1:1"], **kw}
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**args)


def test_request_id_is_a_version_4_uuid():
    import uuid

    ids = {request_id() for _ in range(200)}
    assert len(ids) == 200
    for rid in list(ids)[:20]:
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u).encode() == rid


@pytest.mark.parametrize("cluster,listener,down,grpc,tunnel,want", [
    ("auto", "auto", "http2", False, False, "http2"),     # as the client speaks
    ("auto", "auto", "http1", False, False, "http1"),
    ("auto", "http1", "http2", False, False, "http1"),    # the listener's default (h2 → 1.1 translation)
    ("http2", "http1", "http1", False, False, "http2"),   # the cluster wins
    ("http1", "auto", "http2", True, False, "http2"),     # gRPC is h2 whatever is configured
    ("http2", "auto", "http1", False, True, "http1"),     # a WebSocket tunnel is HTTP/1.1
])
def test_upstream_protocol(cluster, listener, down, grpc, tunnel, want):
    from secmesh.sidecar.http_meta import upstream_protocol

    assert upstream_protocol(cluster, listener, down, grpc=grpc, tunnel=tunnel) == want


def test_translate_between_h1_and_h2():
    from secmesh.sidecar.http_meta import translate

    h1 = [(b"connection", b"keep-alive"), (b"te", b"trailers"), (b"cookie", b"a=1"), (b"x", b"y")]
    assert translate(h1, "http1", "http1") is h1
    assert translate(h1, "http1", "http2") == [(b"te", b"trailers"), (b"cookie", b"a=1"), (b"x", b"y")]
    h2 = [(b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2")]
    assert translate(h2, "http2", "http1") == [(b"cookie", b"a=1; b=2")]


@pytest.mark.parametrize("headers,want", [
    ([(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], True),
    ([(b"upgrade", b"WebSocket"), (b"connection", b"keep-alive, upgrade")], True),
    ([(b"upgrade", b"websocket")], False),
    ([(b"upgrade", b"h2c"), (b"connection", b"upgrade")], False),
    ([], False),
])
def test_wants_websocket(headers, want):
    from secmesh.sidecar.http_meta import wants_websocket

    assert wants_websocket(headers) is want
