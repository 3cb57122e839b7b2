"""RequestAuthentication: token locations, inline JWKS verification with an injected clock, 401 vs no token."""

from __future__ import annotations

import json

import pytest

from secmesh.policy.load import loads_policies
from secmesh.policy.model import Workload
from secmesh.policy.requestauth import JwksCache, RequestAuthenticator
from tests.support.tokens import TokenIssuer

NOW = 1_800_000_000.0
ISS = "https://idp.example"


def authn(issuer: TokenIssuer, extra: str = "") -> RequestAuthenticator:
    doc = (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n"
           f"  jwtRules:\n  - issuer: {ISS}\n    audiences: [api]\n    jwks: '{json.dumps(issuer.jwks())}'\n{extra}")
    return RequestAuthenticator(loads_policies(doc), Workload("default", {}))


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(issuer=ISS)


def test_no_token_means_no_principal(issuer: TokenIssuer) -> None:
    r = authn(issuer).authenticate({}, "", NOW)
    assert r.status == "none" and r.principal is None


def test_valid_bearer_token(issuer: TokenIssuer) -> None:
    tok = issuer.token(audience="api", now=NOW, sub="alice", extra={"scope": "a b"})
    r = authn(issuer).authenticate({"authorization": f"Bearer {tok}"}, "", NOW)
    assert r.status == "ok" and r.principal == f"{ISS}/alice" and r.claims["scope"] == ["a", "b"]
    assert r.remove_headers == ("authorization",)  # forwardOriginalToken defaults to false


def test_access_token_query_parameter(issuer: TokenIssuer) -> None:
    tok = issuer.token(audience="api", now=NOW)
    assert authn(issuer).authenticate({}, f"access_token={tok}", NOW).status == "ok"


@pytest.mark.parametrize("kw,msg", [
    ({"audience": "other"}, "Audiences"),
    ({"audience": "api", "ttl": -3600}, "expired"),
    ({"audience": "api", "issuer": "https://elsewhere"}, "issuer is not configured"),
])
def test_invalid_tokens_are_401(issuer: TokenIssuer, kw: dict, msg: str) -> None:
    tok = issuer.token(now=NOW, **kw)
    r = authn(issuer).authenticate({"authorization": f"Bearer {tok}"}, "", NOW)
    assert r.status == "invalid" and msg in r.message and tok not in r.message


def test_bad_signature_is_401(issuer: TokenIssuer) -> None:
    tok = TokenIssuer(issuer=ISS, kid=issuer.kid).token(audience="api", now=NOW)
    assert authn(issuer).authenticate({"authorization": f"Bearer {tok}"}, "", NOW).status == "invalid"


def test_custom_header_location_and_outputs(issuer: TokenIssuer) -> None:
    extra = ("    fromHeaders: [{name: x-jwt, prefix: 'T '}]\n    forwardOriginalToken: true\n"
             "    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n    outputPayloadToHeader: x-payload\n")
    tok = issuer.token(audience="api", now=NOW, sub="bob")
    r = authn(issuer, extra).authenticate({"x-jwt": f"T {tok}"}, "", NOW)
    assert r.status == "ok" and r.remove_headers == ()
    assert ("x-sub", "bob") in r.add_headers and any(h == "x-payload" for h, _ in r.add_headers)


def test_remote_jwks_cache_backoff_and_refresh(issuer: TokenIssuer) -> None:
    uri = "https://idp.example/jwks"
    doc = (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n"
           f"  jwtRules:\n  - issuer: {ISS}\n    jwksUri: {uri}\n")
    a = RequestAuthenticator(loads_policies(doc), Workload("default", {}))
    cache = JwksCache(refresh_interval=600, retry_initial=1, retry_max=8)
    tok = issuer.token(audience="x", now=NOW)
    assert a.remote_uris == [uri]
    assert a.authenticate({"authorization": f"Bearer {tok}"}, "", NOW, cache).message == "Jwks remote fetch is failed"
    cache.failed(uri, NOW)
    cache.failed(uri, NOW)
    assert not cache.due(uri, NOW + 1.5) and cache.due(uri, NOW + 2)
    cache.update(uri, json.dumps(issuer.jwks()), NOW)
    assert a.authenticate({"authorization": f"Bearer {tok}"}, "", NOW, cache).status == "ok"
    assert not cache.due(uri, NOW + 599) and cache.due(uri, NOW + 600)
