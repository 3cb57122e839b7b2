"""Service-account token validation: one table of good and bad tokens, time from a FakeClock."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from secmesh.clock import FakeClock
from secmesh.identity.spiffe import SpiffeId
from secmesh.identity.tokens import (StaticJwks, TokenError, TokenValidator, UrlJwks, WorkloadIdentity,
                                     jwks_source, token_summary)
from tests.support.tokens import DEFAULT_ISSUER, TokenIssuer

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
T0 = START.timestamp()


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


def validator(issuer: TokenIssuer, clock: FakeClock | None = None, **kw) -> TokenValidator:
    return TokenValidator(StaticJwks.from_dict(issuer.jwks()), trust_domain="example.org",
                          issuers=kw.pop("issuers", [DEFAULT_ISSUER]), clock=clock or FakeClock(START), **kw)


def test_good_token_maps_sub_to_spiffe_id(issuer: TokenIssuer) -> None:
    identity = validator(issuer).validate(issuer.token("payments", "api", now=T0))
    assert isinstance(identity, WorkloadIdentity)
    assert identity.spiffe_id == SpiffeId.parse("spiffe://example.org/ns/payments/sa/api")
    assert (identity.namespace, identity.service_account) == ("payments", "api")
    assert identity.subject == "system:serviceaccount:payments:api"
    assert identity.issuer == DEFAULT_ISSUER
    assert identity.expires_at == dt.datetime.fromtimestamp(T0 + 3600, dt.timezone.utc)


def _other_key_same_kid(issuer: TokenIssuer) -> str:
    return issuer.token(now=T0, key=ec.generate_private_key(ec.SECP256R1()))


BAD = {
    "missing": (lambda i: "", "missing"),
    "not a jws": (lambda i: "abc.def", "malformed"),
    "garbage segments": (lambda i: "a.b.c", "malformed"),
    "alg none": (lambda i: jwt.encode({"sub": "system:serviceaccount:a:b", "aud": "istio-ca", "exp": T0 + 60},
                                      None, algorithm="none", headers={"kid": i.kid}), "unsupported_algorithm"),
    "alg HS256": (lambda i: jwt.encode({"sub": "system:serviceaccount:a:b", "aud": "istio-ca", "exp": T0 + 60},
                                       "secret-secret-secret-secret-secret", algorithm="HS256",
                                       headers={"kid": i.kid}), "unsupported_algorithm"),
    "unknown kid": (lambda i: TokenIssuer(kid="nope").token(now=T0), "unknown_key"),
    "bad signature": (_other_key_same_kid, "bad_signature"),
    "expired": (lambda i: i.token(now=T0 - 7200, ttl=3600), "expired"),
    "not yet valid (nbf)": (lambda i: i.token(now=T0 + 600), "not_yet_valid"),
    "foreign issuer": (lambda i: i.token(now=T0, issuer="https://evil.example"), "wrong_issuer"),
    "wrong audience": (lambda i: i.token(now=T0, audience="other"), "wrong_audience"),
    "no audience": (lambda i: i.token(now=T0, audience=None), "wrong_audience"),
    "no exp": (lambda i: i.token(now=T0, extra={"exp": None}), "malformed"),
    "exp not a number": (lambda i: i.token(now=T0, extra={"exp": "tomorrow"}), "malformed"),
    "sub three parts": (lambda i: i.token(now=T0, sub="system:serviceaccount:ns"), "bad_subject"),
    "sub five parts": (lambda i: i.token(now=T0, sub="system:serviceaccount:ns:sa:x"), "bad_subject"),
    "sub empty ns": (lambda i: i.token(now=T0, sub="system:serviceaccount::sa"), "bad_subject"),
    "sub empty sa": (lambda i: i.token(now=T0, sub="system:serviceaccount:ns:"), "bad_subject"),
    "sub user": (lambda i: i.token(now=T0, sub="system:user:ns:sa"), "bad_subject"),
    "sub slash forges path": (lambda i: i.token(now=T0, sub="system:serviceaccount:a/sa/x:b"), "bad_subject"),
    "sub dot-dot": (lambda i: i.token(now=T0, sub="system:serviceaccount:..:b"), "bad_subject"),
    "no sub": (lambda i: jwt.encode({"iss": DEFAULT_ISSUER, "aud": "istio-ca", "exp": T0 + 60}, i.key,
                                    algorithm="ES256", headers={"kid": i.kid}), "bad_subject"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tokens_are_refused_with_a_reason(issuer: TokenIssuer, case: str) -> None:
    make, reason = BAD[case]
    with pytest.raises(TokenError) as err:
        validator(issuer).validate(make(issuer))
    assert err.value.reason == reason, err.value.message


def test_times_use_the_injected_clock_and_leeway(issuer: TokenIssuer) -> None:
    clock = FakeClock(START)
    v = validator(issuer, clock, leeway_seconds=30)
    token = issuer.token(now=T0, ttl=60)
    v.validate(token)
    clock.advance(60 + 29)          # past exp, inside leeway
    v.validate(token)
    clock.advance(2)                # past exp + leeway
    with pytest.raises(TokenError, match="expired"):
        v.validate(token)
    early = issuer.token(now=T0 + 20)  # nbf/iat 20 s ahead of the clock: inside leeway
    assert validator(issuer, FakeClock(START)).validate(early)


def test_audience_list_intersects_and_issuers_optional(issuer: TokenIssuer) -> None:
    token = issuer.token(now=T0, audience=["foo", "istio-ca"], issuer="https://any.example")
    assert validator(issuer, issuers=None).validate(token)
    with pytest.raises(TokenError):
        validator(issuer, audiences=["bar"], issuers=None).validate(token)


def _sign_with(key, jwk: dict, alg: str) -> tuple[dict, str]:
    jwk = dict(jwk, kid="k1")
    claims = {"iss": DEFAULT_ISSUER, "aud": "istio-ca", "exp": T0 + 60, "sub": "system:serviceaccount:a:b"}
    return {"keys": [jwk]}, jwt.encode(claims, key, algorithm=alg, headers={"kid": "k1"})


@pytest.mark.parametrize("alg", ["RS256", "PS384", "EdDSA", "ES384"])
def test_other_allowed_algorithms(alg: str) -> None:
    if alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif alg == "ES384":
        from jwt.algorithms import ECAlgorithm

        key = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    doc, token = _sign_with(key, jwk, alg)
    v = TokenValidator(StaticJwks.from_dict(doc), trust_domain="example.org", clock=FakeClock(START))
    assert str(v.validate(token).spiffe_id) == "spiffe://example.org/ns/a/sa/b"


def test_jwk_alg_must_match_header(issuer: TokenIssuer) -> None:
    doc = issuer.jwks()
    doc["keys"][0]["alg"] = "ES384"
    v = TokenValidator(StaticJwks.from_dict(doc), trust_domain="example.org", clock=FakeClock(START))
    with pytest.raises(TokenError) as err:
        v.validate(issuer.token(now=T0))
    assert err.value.reason == "bad_signature"


def test_static_jwks_file_and_factory(issuer: TokenIssuer, tmp_path: Path) -> None:
    path = issuer.write_jwks(tmp_path / "jwks.json")
    source = jwks_source(str(path))
    assert isinstance(source, StaticJwks) and source.get_key(issuer.kid) is not None
    assert source.get_key("other") is None
    assert source.get_key(None) is not None  # one key: unambiguous
    assert isinstance(jwks_source("https://issuer.example/jwks"), UrlJwks)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Exception, match="not JSON"):
        StaticJwks.from_file(tmp_path / "bad.json")


class FakeFetch:
    def __init__(self, doc: dict) -> None:
        self.doc: dict | None = doc
        self.calls = 0

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls += 1
        if self.doc is None:
            raise OSError("issuer down")
        return json.dumps(self.doc).encode()


def test_url_jwks_caches_refreshes_and_rate_limits(issuer: TokenIssuer) -> None:
    now = [1000.0]
    fetch = FakeFetch(issuer.jwks())
    source = UrlJwks("https://issuer.example/jwks", refresh_seconds=300, min_refetch_seconds=10, fetch=fetch,
                     monotonic=lambda: now[0])
    assert source.get_key(issuer.kid) is not None and fetch.calls == 1
    assert source.get_key(issuer.kid) is not None and fetch.calls == 1          # cached
    assert source.get_key("rotated") is None and fetch.calls == 1               # refetch rate-limited (just fetched)
    now[0] += 11
    assert source.get_key("rotated") is None and fetch.calls == 2               # unknown kid → one refetch
    assert source.get_key("rotated") is None and fetch.calls == 2               # …then rate-limited
    rotated = TokenIssuer(kid="rotated")
    fetch.doc = rotated.jwks()
    now[0] += 11
    assert source.get_key("rotated") is not None and fetch.calls == 3
    fetch.doc = None                                                            # issuer goes down
    now[0] += 301
    assert source.get_key("rotated") is not None and fetch.calls == 4           # last good keys kept


def test_url_jwks_never_fetched_is_an_unknown_key_error() -> None:
    fetch = FakeFetch({})
    fetch.doc = None
    source = UrlJwks("https://issuer.example/jwks", fetch=fetch)
    with pytest.raises(TokenError) as err:
        source.get_key("k")
    assert err.value.reason == "unknown_key"


def test_token_summary_has_claims_but_never_the_token(issuer: TokenIssuer) -> None:
    token = issuer.token("ns", "sa", now=T0)
    summary = token_summary(token)
    assert summary == {"iss": DEFAULT_ISSUER, "sub": "system:serviceaccount:ns:sa", "exp": int(T0 + 3600)}
    assert token not in json.dumps(summary)
    assert token_summary("garbage") == {"token": "malformed"}
    assert token_summary(None) == {}


def test_url_jwks_sends_the_token_file_over_https_and_rereads_it(issuer: TokenIssuer, tmp_path: Path) -> None:
    from tests.integration.ca.test_ca_deploy_options import JwksServer

    server = JwksServer(tmp_path, issuer.jwks())
    try:
        keys = UrlJwks(server.url, refresh_seconds=0, min_refetch_seconds=0, token_file=server.token_file,
                       ca_file=server.ca)
        assert keys.get_key(issuer.kid) is not None
        server.token_file.write_text("second-token")  # kubelet rotated the projected token
        assert keys.get_key(issuer.kid) is not None
        assert server.seen == ["Bearer first-token", "Bearer second-token"]
        # without the CA bundle the system store refuses the server: no keys, and no token was sent
        bare = UrlJwks(server.url, token_file=server.token_file)
        with pytest.raises(TokenError) as err:
            bare.get_key(issuer.kid)
        assert err.value.reason == "unknown_key" and len(server.seen) == 2
    finally:
        server.close()


def test_url_jwks_refuses_a_token_over_http(tmp_path: Path) -> None:
    from secmesh.errors import IdentityError
    from secmesh.identity.tokens import jwks_source

    (tmp_path / "t").write_text("x")
    with pytest.raises(IdentityError):
        UrlJwks("http://127.0.0.1:1/jwks", token_file=tmp_path / "t")
    with pytest.raises(IdentityError):
        jwks_source(str(tmp_path / "jwks.json"), ca_file=tmp_path / "t")
    with pytest.raises(IdentityError):
        UrlJwks("https://127.0.0.1:1/jwks", ca_file=tmp_path / "t")  # not a PEM bundle
