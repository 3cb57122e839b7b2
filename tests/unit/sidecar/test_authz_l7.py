"""L7 authorization: RequestAuthentication (401) then the connection's residual (403 naming the policy),
with the real policy engine and real signed JWTs; and the local replies (HTTP and gRPC trailers-only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secmesh.policy.attrs import ConnAttrs
from secmesh.policy.engine import Engine
from secmesh.policy.load import load_policies
from secmesh.policy.model import Workload
from secmesh.policy.requestauth import RequestAuthenticator
from secmesh.sidecar.authz_l7 import DENIED_BY, RequestAuthorizer, is_grpc, local_reply
from secmesh.sidecar.codec.stream import RequestHeaders
from tests.support.tokens import TokenIssuer

NOW = 1_900_000_000.0
CLIENT = "spiffe://cluster.local/ns/default/sa/client"
OTHER = "spiffe://cluster.local/ns/default/sa/other"

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: ["GET", "POST"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.test/*"]}}]
    to: [{operation: {paths: ["/jwt/*"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: https://issuer.test
    audiences: [svc]
    jwks: '%s'
"""


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer("https://issuer.test")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, issuer: TokenIssuer):
    path: Path = tmp_path_factory.mktemp("pol") / "p.yaml"
    path.write_text(POLICIES % json.dumps(issuer.jwks()))
    ps = load_policies(path)
    wl = Workload("default", {})
    engine = Engine(ps, wl)
    authn = RequestAuthenticator(ps, wl)
    authz = RequestAuthorizer(now=lambda: NOW, authenticator=lambda: authn)
    return engine, authz


def req(path: bytes = b"/", method: bytes = b"GET", headers=(), authority: bytes = b"svc") -> RequestHeaders:
    return RequestHeaders(1, method, authority, path, b"https", list(headers), True)


def residual(engine: Engine, principal: str | None = CLIENT):
    cd = engine.decide_connection(ConnAttrs(principal, "10.0.0.1", None, "10.0.0.2", 8080), "http")
    return cd.residual


def test_allowed_request(world):
    engine, authz = world
    v = authz.check(req(b"/x"), engine, residual(engine))
    assert v.allowed and v.code == "allow_policy"
    assert v.policy == "ns[default]-policy[allow-client]-rule[0]"


def test_deny_policy_names_itself_and_its_source(world):
    engine, authz = world
    v = authz.check(req(b"/admin/users"), engine, residual(engine))
    assert not v.allowed and v.status == 403 and v.code == "deny_policy"
    assert v.policy == "ns[default]-policy[deny-admin]-rule[0]"
    assert "p.yaml:" in v.message            # file:line:col for the log
    assert v.ref is not None and v.ref.name == "deny-admin"


def test_normalized_path_cannot_sneak_past_a_deny(world):
    engine, authz = world
    for sneaky in (b"/public/../admin", b"/%61dmin", b"/admin?x=1", b"/./admin"):
        assert not authz.check(req(sneaky), engine, residual(engine)).allowed, sneaky


def test_unusable_path_is_a_400_not_a_decision(world):
    engine, authz = world
    v = authz.check(req(b"/a%00b"), engine, residual(engine))
    assert (v.allowed, v.status, v.code) == (False, 400, "invalid_path")


def test_method_not_in_allow_rule(world):
    engine, authz = world
    v = authz.check(req(b"/x", b"DELETE"), engine, residual(engine))
    assert (v.allowed, v.status, v.code, v.policy) == (False, 403, "no_allow_match", "")


def test_valid_token_gives_a_request_principal(world, issuer):
    engine, authz = world
    tok = issuer.token(sub="alice", audience="svc", now=NOW)
    v = authz.check(req(b"/jwt/x", b"DELETE", [(b"authorization", b"Bearer " + tok.encode())]), engine,
                    residual(engine, OTHER))
    assert v.allowed and v.principal == "https://issuer.test/alice"
    assert v.policy == "ns[default]-policy[allow-client]-rule[1]"
    assert b"authorization" in v.remove_headers       # not forwarded unless forwardOriginalToken


def test_no_token_means_no_principal_not_401(world):
    engine, authz = world
    v = authz.check(req(b"/jwt/x", b"DELETE"), engine, residual(engine, OTHER))
    assert (v.allowed, v.status, v.principal) == (False, 403, None)


@pytest.mark.parametrize("kind", ["expired", "audience", "signature", "garbage", "issuer"])
def test_invalid_token_is_401_even_where_allowed(world, issuer, kind):
    engine, authz = world
    if kind == "expired":
        tok = issuer.token(sub="a", audience="svc", now=NOW - 7200, ttl=60)
    elif kind == "audience":
        tok = issuer.token(sub="a", audience="other", now=NOW)
    elif kind == "signature":
        tok = TokenIssuer("https://issuer.test", kid=issuer.kid).token(sub="a", audience="svc", now=NOW)
    elif kind == "issuer":
        tok = issuer.token(sub="a", audience="svc", now=NOW, issuer="https://elsewhere")
    else:
        tok = "not.a.jwt"
    v = authz.check(req(b"/x", headers=[(b"authorization", b"Bearer " + tok.encode())]), engine, residual(engine))
    assert (v.allowed, v.status, v.code) == (False, 401, "jwt_invalid")
    assert tok not in v.message                          # tokens never reach a log line


def test_without_engine_only_authentication_applies(world, issuer):
    _, authz = world
    assert authz.check(req(), None, None).allowed
    bad = authz.check(req(headers=[(b"authorization", b"Bearer x.y.z")]), None, None)
    assert bad.status == 401


def test_strict_plaintext_residual_is_final():
    class Final:
        final = None
    from secmesh.policy.decision import Decision, Reason
    f = Final()
    f.final = Decision(False, Reason.NO_ALLOW_MATCH)
    v = RequestAuthorizer(now=lambda: NOW).check(req(), object(), f)
    assert (v.allowed, v.status) == (False, 403)


def test_http_deny_reply_names_the_policy_unless_off():
    status, headers, body = local_reply(403, grpc=False, policy="ns[a]-policy[b]-rule[0]")
    assert status == 403 and body == b"RBAC: access denied by ns[a]-policy[b]-rule[0]\n"
    assert (DENIED_BY, b"ns[a]-policy[b]-rule[0]") in headers
    assert (b"content-length", str(len(body)).encode()) in headers
    _, headers, body = local_reply(403, grpc=False, policy="ns[a]-policy[b]-rule[0]", name_policy=False)
    assert all(n != DENIED_BY for n, _ in headers)
    assert body == b"RBAC: access denied\n"


def test_grpc_deny_is_trailers_only_permission_denied():
    status, headers, body = local_reply(403, grpc=True, policy="p", detail=b"denied\nby p")
    assert status == 200 and body == b""
    h = dict(headers)
    assert h[b"grpc-status"] == b"7" and h[b"content-type"] == b"application/grpc"
    assert b"\n" not in h[b"grpc-message"]
    assert dict(local_reply(401, grpc=True)[1])[b"grpc-status"] == b"16"
    assert dict(local_reply(504, grpc=True)[1])[b"grpc-status"] == b"4"
    assert dict(local_reply(503, grpc=True)[1])[b"grpc-status"] == b"14"


def test_is_grpc():
    assert is_grpc([(b"content-type", b"application/grpc")])
    assert is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not is_grpc([(b"content-type", b"application/json")])
    assert not is_grpc([])
