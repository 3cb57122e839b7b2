"""The demo's building blocks, checked without starting the mesh: tokens the agent would accept,
configs the real sidecar loader accepts (policy mode and allow-list mode), the backend's HTTP
parsing, the metric parser, and the short-socket-path fallback. What the policies decide is
checked where it matters, on the wire, by `test_demo.py`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from secmesh.demo import configs
from secmesh.demo.backend import parse_head, response
from secmesh.demo.layout import Layout, spiffe_id
from secmesh.demo.probes import metric, metric_samples, parse_head as parse_response_head
from secmesh.demo.steps import parse_xfcc
from secmesh.demo.tokens import TokenMinter
from secmesh.identity.tokens import StaticJwks, TokenValidator
from secmesh.sidecar import config as sconfig


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    lay = Layout.create(tmp_path)
    yield lay
    if lay.separate_sockets:
        shutil.rmtree(lay.sockets, ignore_errors=True)


def test_minted_tokens_validate_as_the_service_account(tmp_path: Path) -> None:
    minter = TokenMinter()
    jwks = minter.write_jwks(tmp_path / "jwks.json")
    token_file = minter.write_token(tmp_path / "t", "shop", "frontend")
    assert token_file.stat().st_mode & 0o777 == 0o600
    ident = TokenValidator(StaticJwks.from_file(jwks), trust_domain="demo.local").validate(token_file.read_text())
    assert str(ident.spiffe_id) == spiffe_id("frontend") == "spiffe://demo.local/ns/shop/sa/frontend"


@pytest.mark.parametrize("policies", [True, False])
def test_sidecar_configs_load_with_the_production_loader(layout: Layout, policies: bool) -> None:
    if policies and not configs.sidecar_supports_policies():
        pytest.skip("this build's sidecar has no policy engine")
    configs.write_all(layout, policies)
    fe = sconfig.load(layout.frontend.sidecar_config)
    assert fe.trust_domain == "demo.local" and fe.workers == 1
    assert fe.listeners[0].kind == "outbound" and fe.listeners[0].peer_ids == [spiffe_id("orders")]
    od = sconfig.load(layout.orders.sidecar_config)
    lst = od.listeners[0]
    assert lst.kind == "inbound" and lst.upstream_addr == ("127.0.0.1", layout.backend_port)
    assert lst.protocol == "http"                 # L7 in both modes: the app gets XFCC
    if policies:
        assert od.policies == str(layout.policies) and od.workload.namespace == "shop"
        assert (layout.policies / "orders.yaml").read_text() == configs.POLICIES
        assert f"name: {configs.PATH_POLICY}" in configs.POLICIES and '"/admin*"' in configs.POLICIES
        assert configs.FORBIDDEN_PATH.startswith("/admin")
    else:
        assert lst.allow_principals == [spiffe_id("frontend")] and lst.static_mode.value == "STRICT"


def test_backend_parses_requests_and_frames_responses() -> None:
    method, path, version, headers = parse_head(b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: "
                                                b"By=spiffe://a;URI=spiffe://b\r\n\r\n")
    assert (method, path, version) == ("GET", "/orders/1", "HTTP/1.1")
    assert headers["x-forwarded-client-cert"] == "By=spiffe://a;URI=spiffe://b"
    with pytest.raises(ValueError):
        parse_head(b"GARBAGE\r\n\r\n")
    raw = response(200, b'{"a": 1}', keep_alive=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 8" in head and b"Connection: keep-alive" in head and json.loads(body) == {"a": 1}


def test_metric_parser_sums_and_lists_labelled_samples() -> None:
    text = ('# HELP x\nsecmesh_sidecar_authz_decisions_total{listener="in",decision="deny",reason="deny_policy",'
            'policy="ns[shop]-policy[p]-rule[0]"} 2.0\n'
            'secmesh_sidecar_authz_decisions_total{listener="in",decision="allow",reason="allow_policy",'
            'policy=""} 5.0\n'
            'secmesh_sidecar_authz_decisions_created{listener="in"} 1.7e9\n')
    assert metric(text, "secmesh_sidecar_authz_decisions_total", decision="deny") == 2.0
    assert metric(text, "secmesh_sidecar_authz_decisions_total") == 7.0
    samples = metric_samples(text, "secmesh_sidecar_authz_decisions_total")
    assert samples[0][0]["policy"] == "ns[shop]-policy[p]-rule[0]" and samples[1][1] == 5.0


def test_long_work_directories_get_short_socket_paths(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    layout = Layout.create(deep)
    try:
        assert layout.separate_sockets and len(str(layout.orders.agent_socket)) < 100
    finally:
        shutil.rmtree(layout.sockets)


def test_xfcc_and_response_heads_are_parsed_as_shown() -> None:
    xfcc = ('By=spiffe://demo.local/ns/shop/sa/orders;Hash=ab12;URI="spiffe://demo.local/ns/shop/sa/frontend",'
            'By=spiffe://x;URI=spiffe://y')
    assert parse_xfcc(xfcc) == {"By": "spiffe://demo.local/ns/shop/sa/orders", "Hash": "ab12",
                                "URI": "spiffe://demo.local/ns/shop/sa/frontend"}
    assert parse_xfcc(None) == {} and parse_xfcc("") == {}
    head = "HTTP/1.1 403 Forbidden\nX-Secmesh-Denied-By: ns[shop]-policy[p]-rule[0]\nvia: a\nVia: b"
    assert parse_response_head(head) == {"x-secmesh-denied-by": "ns[shop]-policy[p]-rule[0]", "via": "a, b"}
