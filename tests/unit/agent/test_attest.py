"""Token extraction from call metadata (istio's header order) and local validation, with reasons counted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secmesh.agent.attest import AUTH_HEADER, BIN_HEADER, Attestor, token_from_metadata
from secmesh.agent.metrics import TOKENS_REJECTED
from secmesh.identity.tokens import StaticJwks, TokenError, TokenValidator
from tests.support.tokens import TokenIssuer


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


def _attestor(issuer: TokenIssuer, token_file: Path | None = None) -> Attestor:
    return Attestor(TokenValidator(StaticJwks.from_dict(issuer.jwks()), trust_domain="cluster.local"), token_file)


@pytest.mark.parametrize("metadata,expected", [
    ([], (None, "")),
    ([("authorization", "Bearer abc")], ("abc", AUTH_HEADER)),
    ([("authorization", "bearer   abc ")], ("abc", AUTH_HEADER)),
    ([("authorization", "abc")], ("abc", AUTH_HEADER)),  # Istio 1.1's raw token
    ([(BIN_HEADER, b"xyz\n")], ("xyz", BIN_HEADER)),
    ([("authorization", "Bearer abc"), (BIN_HEADER, b"xyz")], ("xyz", BIN_HEADER)),  # -bin wins, as in istio
    ([("user-agent", "grpc")], (None, "")),
])
def test_token_from_metadata(metadata: list, expected: tuple) -> None:
    assert token_from_metadata(metadata) == expected


@pytest.mark.parametrize("metadata,reason", [
    ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "malformed"),
    ([("authorization", "Bearer ")], "missing"),
    ([(BIN_HEADER, b"\xff\xfe")], "malformed"),
    ([(BIN_HEADER, b"a" * 20000)], "malformed"),
])
def test_bad_credential_headers(metadata: list, reason: str) -> None:
    with pytest.raises(TokenError) as info:
        token_from_metadata(metadata)
    assert info.value.reason == reason


def test_metadata_token_maps_to_spiffe_id(issuer: TokenIssuer) -> None:
    attested = _attestor(issuer).attest([("authorization", "Bearer " + issuer.token("shop", "cart"))])
    assert str(attested.identity.spiffe_id) == "spiffe://cluster.local/ns/shop/sa/cart"
    assert attested.source == AUTH_HEADER


def test_token_file_is_the_fallback_and_is_reread(issuer: TokenIssuer, tmp_path: Path) -> None:
    f = tmp_path / "istio-token"
    f.write_text(issuer.token("a", "one"))
    att = _attestor(issuer, f)
    assert str(att.attest([]).identity.spiffe_id).endswith("/ns/a/sa/one")
    f.write_text(issuer.token("a", "two") + "\n")  # kubelet rotated the projected token
    got = att.attest([])
    assert str(got.identity.spiffe_id).endswith("/ns/a/sa/two") and got.source == "file"
    # a metadata token takes precedence over the file
    assert str(att.attest([("authorization", "Bearer " + issuer.token("b", "x"))]).identity.spiffe_id).endswith("/sa/x")


@pytest.mark.parametrize("make,reason", [
    (lambda i: None, "missing"),
    (lambda i: "not-a-jwt", "malformed"),
    (lambda i: i.token(ttl=-3600), "expired"),
    (lambda i: i.token(audience="other"), "wrong_audience"),
    (lambda i: i.token(sub="alice"), "bad_subject"),
    (lambda i: TokenIssuer(kid=i.kid).token(), "bad_signature"),
    (lambda i: TokenIssuer().token(), "unknown_key"),
    (lambda i: i.token(now=time.time() + 3600), "not_yet_valid"),
])
def test_rejections_have_reasons_and_are_counted(issuer: TokenIssuer, make, reason: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    token = make(issuer)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    before = TOKENS_REJECTED.labels(reason)._value.get()
    with pytest.raises(TokenError) as info:
        _attestor(issuer).attest(metadata)
    assert info.value.reason == reason
    assert TOKENS_REJECTED.labels(reason)._value.get() == before + 1
    if token:
        assert token not in caplog.text  # never log a token
