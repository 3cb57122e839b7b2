"""Small pure parts of the serving CA: bearer parsing, the token cache, durations, admin routing, SANs."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509

from secmesh.ca.admin import route
from secmesh.ca.config import ServeConfig, format_ttl, load_serve_config, parse_hostport, parse_ttl
from secmesh.ca.server import serving_sans
from secmesh.ca.service import TokenCache, bearer_token
from secmesh.clock import FakeClock
from secmesh.errors import ConfigError
from secmesh.identity.tokens import StaticJwks, TokenError, TokenValidator
from tests.support.tokens import TokenIssuer

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("metadata, token", [
    ([("authorization", "Bearer abc")], "abc"),
    ([("authorization", "bearer abc ")], "abc"),
    ([("x", "y"), ("authorization", "BEARER abc")], "abc"),
    ([("authorization", "Basic abc")], None),
    ([("authorization", "Bearer ")], None),
    ([], None),
    (None, None),
])
def test_bearer_token(metadata, token) -> None:
    assert bearer_token(metadata) == token


def test_token_cache_hits_and_honours_expiry() -> None:
    issuer = TokenIssuer()
    clock = FakeClock(START)
    mono = [0.0]
    validator = TokenValidator(StaticJwks.from_dict(issuer.jwks()), trust_domain="example.org", clock=clock,
                               leeway_seconds=0)
    cache = TokenCache(validator, max_entries=2, max_age=100, monotonic=lambda: mono[0])
    token = issuer.token(now=START.timestamp(), ttl=60)
    first = cache.validate(token)
    assert cache.lookup(token) is first
    mono[0] = 101                       # cached too long: validated again
    assert cache.lookup(token) is None
    cache.validate(token)
    clock.advance(61)                   # token expired: the cache must not extend it
    assert cache.lookup(token) is None
    with pytest.raises(TokenError, match="expired"):
        cache.validate(token)
    with pytest.raises(TokenError):
        cache.validate(None)
    for i in range(3):                  # bounded
        cache.validate(issuer.token(f"n{i}", now=clock.now().timestamp()))
    assert len(cache._entries) == 2


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("90d", 7776000), ("30m", 1800), ("10s", 10),
                                           ("1h30m", 5400), ("45", 45)])
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == dt.timedelta(seconds=seconds)
    assert parse_ttl(format_ttl(dt.timedelta(seconds=seconds))) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1y", "h", "-5m", "10 s"])
def test_bad_ttl(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_ttl(text)


def test_hostport() -> None:
    assert parse_hostport("127.0.0.1:15012") == ("127.0.0.1", 15012)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    with pytest.raises(ConfigError):
        parse_hostport("localhost")


def test_serve_config_layers(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ca.yaml"
    path.write_text("jwks: /etc/jwks.json\nmax_ttl: 30d\naudiences: [a, b]\n")
    monkeypatch.setenv("SECMESH_CA_DEFAULT_TTL", "1h")
    config = load_serve_config(path, {"listen": "127.0.0.1:9999", "issuers": ["https://k8s"]})
    assert isinstance(config, ServeConfig)
    assert (config.jwks, config.max_ttl, config.default_ttl) == ("/etc/jwks.json", 30 * 86400, 3600)
    assert config.audiences == ["a", "b"] and config.issuers == ["https://k8s"] and config.listen == "127.0.0.1:9999"
    path.write_text("jwks: x\nmax_tll: 30d\n")
    with pytest.raises(ConfigError, match="max_ttl"):
        load_serve_config(path, {})
    with pytest.raises(ConfigError, match="jwks"):
        load_serve_config(None, {})


def test_admin_routes() -> None:
    assert route("GET", "/ready", True).startswith(b"HTTP/1.1 200")
    assert route("GET", "/ready", False).startswith(b"HTTP/1.1 503")
    assert b"secmesh_ca_requests_rejected_total" in route("GET", "/metrics", True)
    assert route("GET", "/nope", True).startswith(b"HTTP/1.1 404")
    assert route("POST", "/metrics", True).startswith(b"HTTP/1.1 405")


def test_serving_sans() -> None:
    base = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    assert serving_sans("127.0.0.1") == base
    assert serving_sans("0.0.0.0") == base
    assert serving_sans("10.0.0.5") == [*base, x509.IPAddress(ipaddress.ip_address("10.0.0.5"))]
    assert serving_sans("ca.example") == [*base, x509.DNSName("ca.example")]


def test_documented_config_file_matches_the_defaults() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "configs" / "ca.yaml"
    documented = load_serve_config(path, {"jwks": "jwks.json"})
    assert documented == ServeConfig(jwks="jwks.json")
