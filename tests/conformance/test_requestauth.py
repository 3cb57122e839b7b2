"""RequestAuthentication + AuthorizationPolicy conformance, end to end through the pure cores.

Each case quotes the istio.io RequestAuthentication / JWTRule reference (security/v1
request_authentication.proto and jwt.proto comments). The request goes the way the sidecar
sends it: `RequestAuthenticator.authenticate` (401 on "invalid"), then the verified claims
into `RequestAttrs` and `Engine.decide`.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.engine import Engine
from secmesh.policy.load import loads_policies
from secmesh.policy.model import Workload
from secmesh.policy.requestauth import RequestAuthenticator
from tests.support.tokens import TokenIssuer

NOW = 1_800_000_000.0
FOO, BAR = "https://issuer-foo.example", "https://issuer-bar.example"
WL = Workload("foo", {"app": "httpbin"})
PEER = ConnAttrs("spiffe://cluster.local/ns/client/sa/curl", "10.0.0.1", None, "10.0.0.2", 8000)


@pytest.fixture(scope="module")
def foo() -> TokenIssuer:
    return TokenIssuer(issuer=FOO)


@pytest.fixture(scope="module")
def bar() -> TokenIssuer:
    return TokenIssuer(issuer=BAR)


def ra(name: str, rules: str, *, ns: str = "foo", selector: str = "") -> str:
    sel = f"  selector:\n    matchLabels: {selector}\n" if selector else ""
    return (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n{sel}  jwtRules:\n{textwrap.indent(textwrap.dedent(rules).strip(), '  ')}\n---\n")


def jwt_rule(issuer: TokenIssuer, extra: str = "") -> str:
    return f"- issuer: {issuer.issuer}\n  jwks: '{json.dumps(issuer.jwks())}'\n{extra}"


def ap(name: str, spec: str, ns: str = "foo") -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n---\n")


def serve(policies: str, headers: dict[str, str] | None = None, host: str = "httpbin.foo", path: str = "/") -> str:
    """'401', or the authorization decision ('ALLOW' / 'DENY')."""
    ps = loads_policies(policies, "policies.yaml")
    hdrs = headers or {}
    res = RequestAuthenticator(ps, WL).authenticate(hdrs, "", NOW)
    if res.status == "invalid":
        return "401"
    req = RequestAttrs("GET", path, host, hdrs, res.claims)
    return Engine(ps, WL).decide(PEER, req).action


def bearer(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}"}


REQUIRE_JWT = ap("require-jwt", 'rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]')


def test_no_credentials_are_accepted_without_identity(foo: TokenIssuer) -> None:
    """'A request that does not contain any authentication credentials will be accepted but will not have
    any authenticated identity.'"""
    assert serve(ra("jwt", jwt_rule(foo))) == "ALLOW"


def test_authorization_rule_restricts_to_authenticated_requests(foo: TokenIssuer) -> None:
    """'To restrict access to authenticated requests only, this should be accompanied by an authorization rule.'"""
    policies = ra("jwt", jwt_rule(foo)) + REQUIRE_JWT
    assert serve(policies) == "DENY"
    assert serve(policies, bearer(foo.token(audience="x", now=NOW))) == "ALLOW"


def test_invalid_credentials_are_rejected_even_if_authorization_allows(foo: TokenIssuer) -> None:
    """'It will reject a request if the request contains invalid authentication information.'"""
    policies = ra("jwt", jwt_rule(foo)) + ap("allow-all", "rules: [{}]")
    assert serve(policies, bearer(foo.token(audience="x", now=NOW, ttl=-7200))) == "401"


def test_a_different_iss_is_rejected(foo: TokenIssuer, bar: TokenIssuer) -> None:
    """issuer: 'A JWT with different iss claim will be rejected.'"""
    assert serve(ra("jwt", jwt_rule(foo)), bearer(bar.token(audience="x", now=NOW))) == "401"


def test_audiences(foo: TokenIssuer) -> None:
    """audiences: 'A JWT containing any of these audiences will be accepted.'"""
    policies = ra("jwt", jwt_rule(foo, "  audiences: [a.example, b.example]\n"))
    assert serve(policies, bearer(foo.token(audience=["z", "b.example"], now=NOW))) == "ALLOW"
    assert serve(policies, bearer(foo.token(audience="z", now=NOW))) == "401"


def test_different_requirements_per_host(foo: TokenIssuer, bar: TokenIssuer) -> None:
    """'The RequestAuthentication declares it can accept JWTs issued by either issuer-foo or issuer-bar'; the
    AuthorizationPolicy then requires issuer-foo for example.com and issuer-bar for another-host.com."""
    policies = ra("jwt", jwt_rule(foo) + jwt_rule(bar)) + ap("per-host", f"""
        rules:
        - from: [{{source: {{requestPrincipals: ["{FOO}/*"]}}}}]
          to: [{{operation: {{hosts: ["example.com"]}}}}]
        - from: [{{source: {{requestPrincipals: ["{BAR}/*"]}}}}]
          to: [{{operation: {{hosts: ["another-host.com"]}}}}]
    """)
    tok_foo, tok_bar = foo.token(audience="x", now=NOW), bar.token(audience="x", now=NOW)
    assert serve(policies, bearer(tok_foo), host="example.com") == "ALLOW"
    assert serve(policies, bearer(tok_bar), host="example.com") == "DENY"
    assert serve(policies, bearer(tok_bar), host="another-host.com") == "ALLOW"


def test_require_jwt_except_healthz(foo: TokenIssuer) -> None:
    """'to require JWT on all paths, except /healthz, the same RequestAuthentication can be used'."""
    policies = ra("jwt", jwt_rule(foo)) + ap("p", """
        rules:
        - from: [{source: {requestPrincipals: ["*"]}}]
        - to: [{operation: {paths: ["/healthz"]}}]
    """)
    assert serve(policies, path="/healthz") == "ALLOW"
    assert serve(policies, path="/data") == "DENY"


def test_selector_limits_the_workloads(foo: TokenIssuer) -> None:
    """selector: 'The selector determines the workloads to apply the RequestAuthentication on.' A policy for
    another workload does not check this workload's tokens, so even a bad one passes authentication."""
    policies = ra("jwt", jwt_rule(foo), selector="{app: other}")
    assert serve(policies, bearer("not.a.jwt")) == "ALLOW"


def test_root_namespace_policy_applies_mesh_wide(foo: TokenIssuer) -> None:
    """'A policy in the root namespace ("istio-system" by default) applies to workloads in all namespaces.'"""
    policies = ra("req-authn-for-all", jwt_rule(foo), ns="istio-system")
    assert serve(policies, bearer("not.a.jwt")) == "401"


def test_inline_jwks_wins_over_jwks_uri(foo: TokenIssuer) -> None:
    """jwks_uri: 'Only one of jwks_uri and jwks should be used. jwks_uri will be ignored if it does.'"""
    policies = ra("jwt", jwt_rule(foo, "  jwksUri: https://unreachable.invalid/keys\n"))
    assert serve(policies, bearer(foo.token(audience="x", now=NOW))) == "ALLOW"


def test_custom_header_location(foo: TokenIssuer) -> None:
    """fromHeaders: 'List of header locations from which JWT is expected. For example, below is the location
    spec if JWT is expected to be found in x-jwt-assertion header, and have Bearer prefix'."""
    policies = ra("jwt", jwt_rule(foo, "  fromHeaders: [{name: x-jwt-assertion, prefix: 'Bearer '}]\n")) + REQUIRE_JWT
    tok = foo.token(audience="x", now=NOW)
    assert serve(policies, {"x-jwt-assertion": f"Bearer {tok}"}) == "ALLOW"
    assert serve(policies, bearer(tok)) == "DENY"   # not a location of this rule: no token, no principal


def test_space_delimited_claims_reach_authorization(foo: TokenIssuer) -> None:
    """spaceDelimitedClaims (istio/api#3547): 'a list of custom claims that Istio should parse as space-delimited
    strings'; 'the standard scope and permissions claims ... will always be treated as space-delimited lists'."""
    policies = ra("jwt", jwt_rule(foo, "  spaceDelimitedClaims: [groups]\n")) + ap("p", """
        rules:
        - when:
          - {key: "request.auth.claims[scope]", values: ["write"]}
          - {key: "request.auth.claims[groups]", values: ["dev"]}
    """)
    tok = foo.token(audience="x", now=NOW, extra={"scope": "read write", "groups": "ops dev"})
    assert serve(policies, bearer(tok)) == "ALLOW"
    tok = foo.token(audience="x", now=NOW, extra={"scope": "read", "groups": "ops dev"})
    assert serve(policies, bearer(tok)) == "DENY"
