"""JwksCache: the refresh / back-off state machine, with time injected; discovery helpers."""

from __future__ import annotations

import json

import pytest

from secmesh.policy.jwks import JwksCache, discovery_uri, is_discovery_uri, jwks_uri_from_discovery
from tests.support.tokens import TokenIssuer

URI = "https://idp.example/jwks"
T0 = 1_000.0


@pytest.fixture(scope="module")
def doc() -> str:
    return json.dumps(TokenIssuer().jwks())


def test_unknown_uri_is_due_and_has_no_keys() -> None:
    c = JwksCache()
    assert c.due(URI, T0) and c.keys(URI) is None and not c.state(URI).has_keys


def test_success_schedules_the_next_refresh(doc: str) -> None:
    c = JwksCache(refresh_interval=600)
    assert c.update(URI, doc, T0)
    assert c.keys(URI) is not None and not c.due(URI, T0 + 599) and c.due(URI, T0 + 600)
    assert c.state(URI).fetched_at == T0


def test_failures_back_off_exponentially_to_the_cap() -> None:
    c = JwksCache(retry_initial=1, retry_max=8)
    delays = []
    for _ in range(6):
        c.failed(URI, T0, "connection refused")
        delays.append(c.state(URI).next_attempt - T0)
    assert delays == [1, 2, 4, 8, 8, 8]
    assert c.state(URI).failures == 6 and c.state(URI).last_error == "connection refused"


def test_failure_keeps_the_last_good_keys_and_success_resets_back_off(doc: str) -> None:
    c = JwksCache(refresh_interval=600, retry_initial=1, retry_max=8)
    c.update(URI, doc, T0)
    good = c.keys(URI)
    c.failed(URI, T0 + 600)
    c.failed(URI, T0 + 601)
    assert c.keys(URI) is good and c.due(URI, T0 + 603)
    c.update(URI, doc, T0 + 603)
    c.failed(URI, T0 + 1203)
    assert c.state(URI).next_attempt == T0 + 1204   # back-off starts again at retry_initial


@pytest.mark.parametrize("bad", ["not json", "{}", '{"keys": []}', '{"keys": [{"kty": "nope"}]}'])
def test_a_bad_document_is_a_failure_and_keeps_old_keys(doc: str, bad: str) -> None:
    c = JwksCache(retry_initial=1)
    c.update(URI, doc, T0)
    good = c.keys(URI)
    assert not c.update(URI, bad, T0 + 1)
    assert c.keys(URI) is good and c.state(URI).failures == 1 and c.state(URI).last_error


def test_retain_forgets_uris_no_policy_names(doc: str) -> None:
    c = JwksCache()
    c.update(URI, doc, T0)
    c.failed("https://gone.example/k", T0)
    c.retain([URI])
    assert [s["uri"] for s in c.snapshot()] == [URI]


def test_discovery_helpers() -> None:
    assert discovery_uri("https://idp.example/") == "https://idp.example/.well-known/openid-configuration"
    assert discovery_uri("https://idp.example/tenant") == "https://idp.example/tenant/.well-known/openid-configuration"
    assert discovery_uri("accounts@example.com") is None
    assert is_discovery_uri("https://a/.well-known/openid-configuration") and not is_discovery_uri(URI)
    assert jwks_uri_from_discovery('{"jwks_uri": "https://a/k"}') == "https://a/k"
    for bad in ("[]", '{"jwks_uri": "file:///etc/passwd"}', "{}", "nope"):
        with pytest.raises(ValueError):
            jwks_uri_from_discovery(bad)
