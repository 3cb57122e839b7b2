"""SdsStreamState follows istio's ShouldRespond: initial, ACK, NACK, stale nonce, unsubscribe, added names."""

from __future__ import annotations

import itertools

import pytest

from secmesh.agent.cache import KEY_CERT, ROOTS
from secmesh.agent.sds_state import (ACK, INITIAL, MORE, NACK, STALE, UNSUBSCRIBE, SdsStreamState, next_version,
                                     version_counter)
from secmesh.agent.secrets import SECRET_TYPE_URL, resource_kind
from secmesh.errors import SdsError


def state() -> SdsStreamState:
    counter = itertools.count(1)
    return SdsStreamState(nonce_factory=lambda: f"n{next(counter)}")


def req(st: SdsStreamState, names=("default",), nonce="", version="", error=None, type_url=SECRET_TYPE_URL):
    return st.on_request(resource_names=names, response_nonce=nonce, version_info=version, error_message=error,
                         type_url=type_url)


def sent(st: SdsStreamState, version: str = "v1", kinds=None) -> str:
    nonce = st.new_nonce()
    st.record_sent(version, nonce, kinds)
    return nonce


def test_initial_then_ack() -> None:
    st = state()
    d = req(st, ("default", "ROOTCA"))
    assert (d.kind, d.respond) == (INITIAL, ("default", "ROOTCA"))
    n = sent(st, "v1")
    d = req(st, ("default", "ROOTCA"), nonce=n, version="v1")
    assert (d.kind, d.respond) == (ACK, ())
    assert st.acked_version == "v1"


def test_nack_keeps_serving_and_sends_nothing() -> None:
    st = state()
    req(st)
    n = sent(st, "v1")
    d = req(st, nonce=n, version="", error="bad key")
    assert (d.kind, d.respond, d.error) == (NACK, (), "bad key")
    assert st.last_error == "bad key" and st.watched == ("default",)


def test_stale_nonce_is_ignored() -> None:
    st = state()
    req(st)
    old = sent(st, "v1")
    sent(st, "v2")  # a push overtook the client's ACK of v1
    assert req(st, nonce=old, version="v1").kind == STALE
    assert st.acked_version == ""


def test_added_names_get_only_the_added() -> None:
    st = state()
    req(st, ("default",))
    n = sent(st)
    d = req(st, ("default", "ROOTCA"), nonce=n, version="v1")
    assert (d.kind, d.respond) == (MORE, ("ROOTCA",))
    n = sent(st)
    d = req(st, ("ROOTCA",), nonce=n, version="v2")  # shrink: no response
    assert (d.kind, d.respond, st.watched) == (ACK, (), ("ROOTCA",))


def test_empty_names_unsubscribe_and_reconnect_is_initial() -> None:
    st = state()
    req(st)
    n = sent(st)
    assert req(st, (), nonce=n).kind == UNSUBSCRIBE and st.watched == ()
    d = req(st, ("default",), nonce="whatever-from-before-restart", version="old")
    assert (d.kind, d.respond) == (INITIAL, ("default",))


def test_wrong_type_url_is_malformed() -> None:
    with pytest.raises(SdsError) as info:
        req(state(), type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
    assert info.value.reason == "malformed_request"


def test_push_only_for_watched_kinds_after_first_response() -> None:
    st = state()
    req(st, ("default", "ROOTCA"))
    assert st.on_change({KEY_CERT}, resource_kind) == ()  # nothing sent yet: the response will carry it
    sent(st, "v1", {KEY_CERT: 5, ROOTS: 2})
    assert st.on_change({KEY_CERT}, resource_kind) == ("default",)
    assert st.on_change({ROOTS, KEY_CERT}, resource_kind) == ("default", "ROOTCA")
    # the change raced with the response that already carried version 5: no duplicate push
    assert st.on_change({KEY_CERT}, resource_kind, {KEY_CERT: 5, ROOTS: 2}) == ()
    assert st.on_change({KEY_CERT}, resource_kind, {KEY_CERT: 6, ROOTS: 2}) == ("default",)


def test_versions_increase() -> None:
    a, b = next_version("2026-01-01T00:00:00Z"), next_version("2026-01-01T00:00:00Z")
    assert version_counter(b) == version_counter(a) + 1
