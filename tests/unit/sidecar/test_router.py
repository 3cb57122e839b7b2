"""Router: authority (exact / wildcard / port), path (exact / prefix / regex), methods, headers → cluster."""

from __future__ import annotations

import pytest

from secmesh.sidecar.l7_config import HeaderMatchConfig, RouteConfig
from secmesh.sidecar.router import Router, split_authority


def R(cluster: str, **kw) -> RouteConfig:
    return RouteConfig(cluster=cluster, **kw)


def go(router: Router, authority=b"svc", path=b"/", method=b"GET", headers=()):
    r = router.route(authority, path, method, list(headers))
    return r.cluster if r is not None else None


@pytest.mark.parametrize("authority,expected", [
    (b"api.example.com", b"api.example.com"), (b"API.Example.com:8080", b"api.example.com"),
    (b"[::1]:443", b"[::1]"), (b"[::1]", b"[::1]"), (b"host:notaport", b"host:notaport"),
])
def test_split_authority(authority, expected):
    assert split_authority(authority) == expected


AUTH = Router([
    R("exact", authority=["api.example.com"]),
    R("with-port", authority=["admin.local:9000"]),
    R("suffix", authority=["*.example.com"]),
    R("prefix", authority=["internal.*"]),
    R("any", authority=["*"]),
])


@pytest.mark.parametrize("authority,cluster", [
    (b"api.example.com", "exact"),
    (b"API.EXAMPLE.COM:8443", "exact"),          # case-insensitive, port ignored by a port-less pattern
    (b"admin.local:9000", "with-port"),
    (b"admin.local:9001", "any"),                # a pattern with a port compares the port too
    (b"www.example.com", "suffix"),
    (b"a.b.example.com:80", "suffix"),
    (b"example.com", "any"),                     # `*.example.com` needs something before the dot
    (b"internal.corp", "prefix"),
    (b"elsewhere", "any"),
])
def test_authority_matching(authority, cluster):
    assert go(AUTH, authority=authority) == cluster


PATHS = Router([
    R("exact", path_exact="/healthz"),
    R("regex", path_regex=r"/users/[0-9]+"),
    R("prefix", path_prefix="/api/"),
], default="fallback")


@pytest.mark.parametrize("path,cluster", [
    (b"/healthz", "exact"), (b"/healthz?full=1", "exact"), (b"/healthz/x", "fallback"),
    (b"/users/42", "regex"), (b"/users/42?x=1", "regex"), (b"/users/42/edit", "fallback"),   # full match
    (b"/api/v1/items", "prefix"), (b"/api", "fallback"), (b"/apix/", "fallback"),
    (b"/", "fallback"),
])
def test_path_matching(path, cluster):
    assert go(PATHS, path=path) == cluster


def test_first_match_wins_and_methods():
    r = Router([R("writes", path_prefix="/", methods=["post", "PUT"]), R("reads", path_prefix="/")])
    assert go(r, method=b"POST") == "writes"
    assert go(r, method=b"PUT") == "writes"
    assert go(r, method=b"GET") == "reads"


def test_header_conditions():
    r = Router([
        R("canary", headers=[HeaderMatchConfig(name="X-Canary", exact="1")]),
        R("grpc", headers=[HeaderMatchConfig(name="content-type", prefix="application/grpc")]),
        R("tenant", headers=[HeaderMatchConfig(name="x-tenant", regex="t-[a-z]+"),
                             HeaderMatchConfig(name="x-debug", present=True, invert=True)]),
        R("has-debug", headers=[HeaderMatchConfig(name="x-debug", present=True)]),
    ], default="default")
    assert go(r, headers=[(b"x-canary", b"1")]) == "canary"
    assert go(r, headers=[(b"x-canary", b"2")]) == "default"
    assert go(r, headers=[(b"content-type", b"application/grpc+proto")]) == "grpc"
    assert go(r, headers=[(b"x-tenant", b"t-abc")]) == "tenant"
    assert go(r, headers=[(b"x-tenant", b"t-abc"), (b"x-debug", b"")]) == "has-debug"
    assert go(r, headers=[(b"x-tenant", b"t-ABC")]) == "default"        # regex is a full match
    # repeated headers are joined with "," before matching (Envoy's view)
    assert go(r, headers=[(b"x-canary", b"1"), (b"x-canary", b"1")]) == "default"


def test_no_match_without_default_is_none():
    r = Router([R("only", path_exact="/x")])
    assert go(r, path=b"/y") is None


def test_no_routes_means_everything_to_the_default():
    r = Router([], default="listener.upstream")
    assert go(r, authority=b"anything", path=b"/any?thing", method=b"DELETE") == "listener.upstream"
    assert r.clusters == {"listener.upstream"}


def test_all_conditions_must_hold():
    r = Router([R("both", authority=["a.local"], path_prefix="/p", methods=["GET"],
                  headers=[HeaderMatchConfig(name="x", exact="y")])], default="d")
    assert go(r, b"a.local", b"/p/1", b"GET", [(b"x", b"y")]) == "both"
    for args in ((b"b.local", b"/p/1", b"GET", [(b"x", b"y")]), (b"a.local", b"/q", b"GET", [(b"x", b"y")]),
                 (b"a.local", b"/p/1", b"POST", [(b"x", b"y")]), (b"a.local", b"/p/1", b"GET", [])):
        assert go(r, *args) == "d"


@pytest.mark.parametrize("kw,message", [
    ({"path_exact": "/a", "path_prefix": "/b"}, "at most one"),
    ({"path_prefix": "nope"}, "start with '/'"),
    ({"path_regex": "("}, "invalid regular expression"),
    ({"headers": [HeaderMatchConfig(name="x", exact="1")], "retries": -1}, "retries"),
])
def test_bad_routes_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        RouteConfig(cluster="c", **kw)


def test_route_needs_cluster_and_header_needs_one_condition():
    with pytest.raises(ValueError, match="cluster"):
        RouteConfig()
    with pytest.raises(ValueError, match="exactly one"):
        HeaderMatchConfig(name="x", exact="1", prefix="2")
    with pytest.raises(ValueError, match="exactly one"):
        HeaderMatchConfig(name="x")


def test_timeouts_and_retries_carry_through():
    r = Router([R("c", path_prefix="/slow", timeout=30.0, retries=0)], default="d")
    route = r.route(b"h", b"/slow/x", b"GET", [])
    assert (route.cluster, route.timeout, route.retries) == ("c", 30.0, 0)
    d = r.route(b"h", b"/fast", b"GET", [])
    assert (d.cluster, d.timeout, d.retries) == ("d", None, None)
