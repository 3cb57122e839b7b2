"""RequestAuthentication: token locations, verification order, multiple providers, pure outputs.

Envoy's behaviour is what Istio configures (`convertToEnvoyJwtConfig`: per rule `{provider OR
allow_missing}`, rules sorted by issuer, OR of all), so the cases below cite either the Istio
reference or the Envoy jwt_authn code path they mirror.
"""

from __future__ import annotations

import base64
import json

import pytest

from secmesh.policy.load import loads_policies
from secmesh.policy.model import Workload
from secmesh.policy.requestauth import RequestAuthenticator, claim_header_value
from tests.support.tokens import TokenIssuer

NOW = 1_800_000_000.0
ISS = "https://idp.example"
ISS2 = "https://other.example"


def rule(issuer: TokenIssuer, extra: str = "", iss: str = ISS, audiences: str = "[api]") -> str:
    return (f"  - issuer: {iss}\n    audiences: {audiences}\n    jwks: '{json.dumps(issuer.jwks())}'\n{extra}")


def authn(*rules: str) -> RequestAuthenticator:
    doc = ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n"
           "  jwtRules:\n" + "".join(rules))
    return RequestAuthenticator(loads_policies(doc), Workload("default", {}))


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(issuer=ISS)


@pytest.fixture(scope="module")
def issuer2() -> TokenIssuer:
    return TokenIssuer(issuer=ISS2)


def bearer(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}"}


def test_no_token_means_no_principal(issuer: TokenIssuer) -> None:
    """'A request that does not contain any authentication credentials will be accepted but will not
    have any authenticated identity.'"""
    r = authn(rule(issuer)).authenticate({}, "", NOW)
    assert r.status == "none" and r.principal is None


def test_valid_bearer_token(issuer: TokenIssuer) -> None:
    tok = issuer.token(audience="api", now=NOW, sub="alice", extra={"scope": "a  b"})
    r = authn(rule(issuer)).authenticate(bearer(tok), "", NOW)
    assert r.status == "ok" and r.principal == f"{ISS}/alice"
    assert r.claims["scope"] == ["a", "b"] and r.raw_claims["scope"] == "a  b"
    assert r.remove_headers == ("authorization",)  # forwardOriginalToken defaults to false


def test_basic_authorization_is_not_a_token(issuer: TokenIssuer) -> None:
    """Envoy extracts a header token only when the value prefix (`Bearer `) is present."""
    assert authn(rule(issuer)).authenticate({"authorization": "Basic dXNlcjpwdw=="}, "", NOW).status == "none"


def test_empty_bearer_is_a_bad_token(issuer: TokenIssuer) -> None:
    r = authn(rule(issuer)).authenticate({"authorization": "Bearer "}, "", NOW)
    assert r.status == "invalid" and "Header.Payload.Signature" in r.message


def test_access_token_query_parameter(issuer: TokenIssuer) -> None:
    """Default locations: 'The Authorization header using the Bearer schema' then 'The access_token query parameter'."""
    tok = issuer.token(audience="api", now=NOW)
    r = authn(rule(issuer)).authenticate({}, f"x=1&access_token={tok}", NOW)
    assert r.status == "ok" and r.remove_headers == ()   # a query token is not stripped (Envoy TODO)


def test_cookie_location(issuer: TokenIssuer) -> None:
    tok = issuer.token(audience="api", now=NOW)
    r = authn(rule(issuer, "    fromCookies: [session]\n")).authenticate({"cookie": f'a=1; session="{tok}"'}, "", NOW)
    assert r.status == "ok"


@pytest.mark.parametrize("kw,msg", [
    ({"audience": "other"}, "Audiences in Jwt are not allowed"),
    ({"audience": "api", "ttl": -3600}, "Jwt is expired"),
    ({"audience": "api", "issuer": "https://elsewhere"}, "Jwt issuer is not configured"),
])
def test_invalid_tokens_are_401(issuer: TokenIssuer, kw: dict, msg: str) -> None:
    """'If validation fails, the request will be rejected.' (istio/istio#24371: unknown issuer → 401)."""
    tok = issuer.token(now=NOW, **kw)
    r = authn(rule(issuer)).authenticate(bearer(tok), "", NOW)
    assert r.status == "invalid" and r.message == msg and tok not in r.message


def test_not_yet_valid_and_clock_skew(issuer: TokenIssuer) -> None:
    a = authn(rule(issuer))
    assert a.authenticate(bearer(issuer.token(audience="api", now=NOW + 30)), "", NOW).status == "ok"  # 60 s skew
    r = a.authenticate(bearer(issuer.token(audience="api", now=NOW + 600)), "", NOW)
    assert r.message == "Jwt not yet valid"


def test_expiry_is_checked_before_the_signature(issuer: TokenIssuer) -> None:
    """Envoy's order: issuer, time, audiences, then keys and signature."""
    forged = TokenIssuer(issuer=ISS, kid=issuer.kid).token(audience="api", now=NOW, ttl=-3600)
    assert authn(rule(issuer)).authenticate(bearer(forged), "", NOW).message == "Jwt is expired"


def test_bad_signature_is_401(issuer: TokenIssuer) -> None:
    tok = TokenIssuer(issuer=ISS, kid=issuer.kid).token(audience="api", now=NOW)
    assert authn(rule(issuer)).authenticate(bearer(tok), "", NOW).message == "Jwt verification fails"


def test_unknown_kid_is_a_key_mismatch(issuer: TokenIssuer) -> None:
    tok = TokenIssuer(issuer=ISS, kid="nope").token(audience="api", now=NOW)
    assert authn(rule(issuer)).authenticate(bearer(tok), "", NOW).message.startswith("Jwks doesn't have key")


def test_audience_ignores_scheme_and_trailing_slash(issuer: TokenIssuer) -> None:
    """jwt_verify_lib CheckAudience strips http(s):// and a trailing '/' on both sides."""
    a = authn(rule(issuer, audiences="['https://api.example/']"))
    assert a.authenticate(bearer(issuer.token(audience="api.example", now=NOW)), "", NOW).status == "ok"


def test_custom_header_location_and_outputs(issuer: TokenIssuer) -> None:
    extra = ("    fromHeaders: [{name: x-jwt, prefix: 'T '}]\n    forwardOriginalToken: true\n"
             "    outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: x-team, claim: org.team}]\n"
             "    outputPayloadToHeader: X-Payload\n")
    tok = issuer.token(audience="api", now=NOW, sub="bob", extra={"org": {"team": "blue"}})
    r = authn(rule(issuer, extra)).authenticate({"x-jwt": f"T {tok}"}, "", NOW)
    assert r.status == "ok"
    assert set(r.remove_headers) == {"x-payload", "x-sub", "x-team"}   # forged copies go; the token stays
    adds = dict(r.add_headers)
    assert adds["x-sub"] == "bob" and adds["x-team"] == "blue"
    assert adds["x-payload"] == tok.split(".")[1]                    # the token's own base64url segment
    payload = json.loads(base64.urlsafe_b64decode(adds["x-payload"] + "=" * (-len(adds["x-payload"]) % 4)))
    assert payload["sub"] == "bob"


def test_output_headers_are_sanitized_even_without_a_token(issuer: TokenIssuer) -> None:
    """Envoy's extractor removes every `forward_payload_header` / `claim_to_headers` name from the request."""
    extra = "    outputClaimToHeaders: [{header: X-Sub, claim: sub}]\n"
    assert authn(rule(issuer, extra)).authenticate({}, "", NOW).remove_headers == ("x-sub",)


@pytest.mark.parametrize("value,expected", [
    ("s", "s"), (True, "true"), (False, "false"), (42, "42"), (1.5, "1.500000"), (-3, "-3.000000"),
    (["a", "b"], base64.b64encode(b'["a","b"]').decode()), ({"k": 1}, base64.b64encode(b'{"k":1}').decode()),
    (None, ""), ("a\r\nx-evil: 1", ""), ("a\nb", ""), ("a\x00b", ""),
])
def test_claim_header_rendering(value: object, expected: str) -> None:
    """Envoy addJWTClaimToHeader: strings, integers, booleans; other numbers as C++ to_string; lists and
    objects as base64 JSON; anything else (null) adds no header, and neither does a string that
    would split the header (CR, LF, NUL)."""
    assert claim_header_value({"c": value}, "c") == expected


def test_space_delimited_claims_are_configurable(issuer: TokenIssuer) -> None:
    """spaceDelimitedClaims: split in addition to the built-in `scope` and `permission`."""
    extra = "    spaceDelimitedClaims: [roles]\n"
    tok = issuer.token(audience="api", now=NOW, extra={"roles": "a b", "permission": "r w", "other": "x y"})
    r = authn(rule(issuer, extra)).authenticate(bearer(tok), "", NOW)
    assert r.claims["roles"] == ["a", "b"] and r.claims["permission"] == ["r", "w"] and r.claims["other"] == "x y"


# --- several rules -------------------------------------------------------------------------

def test_two_issuers_on_the_default_location(issuer: TokenIssuer, issuer2: TokenIssuer) -> None:
    """Both rules read `Authorization`: the one whose issuer matches verifies it (Istio's outer OR)."""
    a = authn(rule(issuer), rule(issuer2, iss=ISS2))
    r = a.authenticate(bearer(issuer2.token(audience="api", now=NOW, sub="x")), "", NOW)
    assert r.status == "ok" and r.principal == f"{ISS2}/x"
    stranger = TokenIssuer(issuer="https://nobody.example").token(audience="api", now=NOW)
    assert a.authenticate(bearer(stranger), "", NOW).message == "Jwt issuer is not configured"


def test_tokens_at_different_locations(issuer: TokenIssuer, issuer2: TokenIssuer) -> None:
    """'Requests with multiple tokens (at different locations) are not supported, the output principal of
    such requests is undefined.' Envoy passes when one provider verifies; we name the first in issuer order."""
    a = authn(rule(issuer, "    fromHeaders: [{name: x-a}]\n"), rule(issuer2, "    fromHeaders: [{name: x-b}]\n", iss=ISS2))
    good_a = issuer.token(audience="api", now=NOW, sub="a")
    good_b = issuer2.token(audience="api", now=NOW, sub="b")
    r = a.authenticate({"x-a": good_a, "x-b": good_b}, "", NOW)
    assert r.status == "ok" and r.principal == f"{ISS}/a"
    bad_b = issuer2.token(audience="api", now=NOW, ttl=-3600)
    assert a.authenticate({"x-a": good_a, "x-b": bad_b}, "", NOW).status == "ok"
    r = a.authenticate({"x-b": bad_b}, "", NOW)
    assert r.status == "invalid" and r.message == "Jwt is expired"


def test_every_token_of_one_provider_must_verify(issuer: TokenIssuer) -> None:
    """Envoy: 'If a request has multiple tokens, all of them must be valid.'"""
    good = issuer.token(audience="api", now=NOW)
    bad = issuer.token(audience="other", now=NOW)
    r = authn(rule(issuer)).authenticate(bearer(good), f"access_token={bad}", NOW)
    assert r.status == "invalid" and r.message == "Audiences in Jwt are not allowed"


def test_rules_from_several_policies_merge(issuer: TokenIssuer, issuer2: TokenIssuer) -> None:
    doc = "".join(
        f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {n}, namespace: {ns}}}\n"
        f"spec:\n  jwtRules:\n{rule(i, iss=s)}---\n"
        for n, ns, i, s in (("a", "default", issuer, ISS), ("b", "istio-system", issuer2, ISS2)))
    a = RequestAuthenticator(loads_policies(doc), Workload("default", {}))
    assert [p.rule.issuer for p in a.providers] == [ISS, ISS2]
    assert a.authenticate(bearer(issuer2.token(audience="api", now=NOW)), "", NOW).status == "ok"


def test_target_refs_policies_do_not_bind_to_a_sidecar(issuer: TokenIssuer) -> None:
    doc = ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: gw}\nspec:\n"
           "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n  jwtRules:\n" + rule(issuer))
    assert RequestAuthenticator(loads_policies(doc), Workload("default", {})).providers == []


# --- remote keys -----------------------------------------------------------------------------

def test_remote_and_discovered_key_sources(issuer: TokenIssuer) -> None:
    doc = ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n"
           "  jwtRules:\n  - issuer: https://idp.example/\n  - issuer: https://b.example\n    jwksUri: https://b.example/k\n"
           "    timeout: 2s\n  - issuer: mail@example.com\n    jwksUri: https://c.example/k\n")
    a = RequestAuthenticator(loads_policies(doc), Workload("default", {}))
    assert a.remote_uris == ["https://b.example/k", "https://c.example/k",
                             "https://idp.example/.well-known/openid-configuration"]
    assert dict(a.remote_sources)["https://b.example/k"] == 2.0


def test_remote_keys_not_fetched_yet_fail_the_token_but_not_anonymous_requests(issuer: TokenIssuer) -> None:
    from secmesh.policy.jwks import JwksCache

    doc = ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n"
           f"  jwtRules:\n  - issuer: {ISS}\n")
    a = RequestAuthenticator(loads_policies(doc), Workload("default", {}))
    cache = JwksCache()
    tok = issuer.token(audience="x", now=NOW)
    assert a.authenticate(bearer(tok), "", NOW, cache).message == "Jwks remote fetch is failed"
    assert a.authenticate({}, "", NOW, cache).status == "none"
    cache.update(a.remote_uris[0], json.dumps(issuer.jwks()), NOW)
    assert a.authenticate(bearer(tok), "", NOW, cache).status == "ok"
