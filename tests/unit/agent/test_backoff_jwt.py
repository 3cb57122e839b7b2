"""Capped exponential backoff with jitter; JWT-SVID mint/validate per the JWT-SVID spec."""

from __future__ import annotations

import datetime as dt

import grpc
import jwt
import pytest

from secmesh.agent.ca_client import Backoff, is_retryable, reason_for
from secmesh.agent.jwt_authority import JwtAuthority, JwtSvidError
from secmesh.errors import CAError
from secmesh.identity.spiffe import SpiffeId

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
SID = SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b")


def test_backoff_grows_and_caps() -> None:
    b = Backoff(initial=1, maximum=30, jitter=0.2)
    mid = [b.delay(i, lambda: 0.5) for i in range(8)]
    assert mid == [1, 2, 4, 8, 16, 30, 30, 30]
    assert b.delay(0, lambda: 0.0) == pytest.approx(0.8) and b.delay(0, lambda: 0.999999) == pytest.approx(1.2)
    assert b.delay(10, lambda: 0.999999) == 30  # the cap holds with jitter too
    assert b.delay(10_000, lambda: 0.5) == 30


@pytest.mark.parametrize("code,reason,retry", [
    (grpc.StatusCode.UNAVAILABLE, "unavailable", True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "timeout", True),
    (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", False),
    (grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", False),
    (grpc.StatusCode.PERMISSION_DENIED, "permission_denied", False),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", True),
])
def test_ca_errors_classified(code, reason: str, retry: bool) -> None:
    assert reason_for(code) == reason
    assert is_retryable(CAError("x", reason=reason)) is retry


def test_jwt_svid_round_trip_and_bundle() -> None:
    auth = JwtAuthority("cluster.local")
    token = auth.mint(SID, ["svc-b"], now=NOW, ttl_seconds=300)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": auth.kid, "typ": "JWT"}
    sid, claims = auth.validate(token, "svc-b", now=NOW + dt.timedelta(seconds=10))
    assert sid == SID and claims["aud"] == "svc-b" and claims["exp"] == int(NOW.timestamp()) + 300
    bundle = auth.bundle().to_spiffe_jwks()
    assert bundle["keys"][0]["use"] == "jwt-svid" and bundle["keys"][0]["kid"] == auth.kid


@pytest.mark.parametrize("case,reason", [
    ("wrong_aud", "wrong_audience"), ("expired", "expired"), ("foreign_key", "unknown_key"),
    ("alg_none", "unsupported_algorithm"), ("extra_header", "malformed"), ("foreign_td", "bad_subject"),
    ("tampered", "bad_signature"),
])
def test_jwt_svid_rejections(case: str, reason: str) -> None:
    auth = JwtAuthority("cluster.local")
    aud, now = "svc-b", NOW
    if case == "wrong_aud":
        token = auth.mint(SID, ["svc-c"], now=NOW, ttl_seconds=60)
    elif case == "expired":
        token, now = auth.mint(SID, [aud], now=NOW, ttl_seconds=60), NOW + dt.timedelta(seconds=61)
    elif case == "foreign_key":
        token = JwtAuthority("cluster.local").mint(SID, [aud], now=NOW, ttl_seconds=60)
    elif case == "alg_none":
        token = jwt.encode({"sub": str(SID), "aud": aud, "exp": 2**40}, None, algorithm="none",
                           headers={"kid": auth.kid})
    elif case == "extra_header":
        token = jwt.encode({"sub": str(SID), "aud": aud, "exp": 2**40}, auth.key, algorithm="ES256",
                           headers={"kid": auth.kid, "jku": "https://evil"})
    elif case == "foreign_td":
        token = auth.mint(SpiffeId.parse("spiffe://other.org/ns/a/sa/b"), [aud], now=NOW, ttl_seconds=60)
    else:
        good = auth.mint(SID, [aud], now=NOW, ttl_seconds=60)
        h, p, s = good.split(".")
        token = f"{h}.{p}.{s[:-4]}AAAA"
    with pytest.raises(JwtSvidError) as info:
        auth.validate(token, aud, now=now)
    assert info.value.reason == reason
