"""AllowList: ghostunnel-style wildcards, fail closed, plaintext handling."""

from __future__ import annotations

import pytest

from secmesh.identity.spiffe import SpiffeId
from secmesh.sidecar.authz_l4 import AllowAny, AllowList, ConnectionInfo


def info(principal: str | None) -> ConnectionInfo:
    return ConnectionInfo(SpiffeId.parse(principal) if principal else None, "10.0.0.1", 5555, "10.0.0.2", 15006)


@pytest.mark.parametrize("patterns, principal, allowed", [
    (["spiffe://td/ns/a/sa/b"], "spiffe://td/ns/a/sa/b", True),
    (["spiffe://td/ns/a/sa/b"], "spiffe://td/ns/a/sa/c", False),
    (["spiffe://td/ns/*/sa/b"], "spiffe://td/ns/x/sa/b", True),
    (["spiffe://td/ns/*/sa/b"], "spiffe://td/ns/x/y/sa/b", False),   # * is exactly one segment
    (["spiffe://td/ns/*"], "spiffe://td/ns/a/sa/b", False),
    (["spiffe://td/ns/**"], "spiffe://td/ns/a/sa/b", True),          # ** = one or more trailing segments
    (["spiffe://td/ns/**"], "spiffe://td/ns", False),
    (["spiffe://td/**"], "spiffe://other/ns/a", False),              # never across trust domains
    (["spiffe://td/ns/a/sa/b", "spiffe://td/ns/c/**"], "spiffe://td/ns/c/sa/d", True),
])
def test_patterns(patterns, principal, allowed):
    assert AllowList(patterns).decide(info(principal)).allowed is allowed


def test_empty_list_fails_closed_unless_allow_all():
    d = AllowList([]).decide(info("spiffe://td/ns/a/sa/b"))
    assert not d.allowed and "fail closed" in d.reason
    assert AllowList([], allow_all=True).decide(info("spiffe://td/ns/a/sa/b")).allowed
    assert AllowList([], allow_all=True).decide(info(None)).allowed   # plaintext admitted only by allow_all


def test_plaintext_has_no_principal():
    d = AllowList(["spiffe://td/**"]).decide(info(None))
    assert not d.allowed and d.policy == "allow_principals"


def test_decision_names_the_policy_and_reason():
    d = AllowList(["spiffe://td/ns/*/sa/b"], name="in/allow").decide(info("spiffe://td/ns/x/sa/b"))
    assert d.allowed and d.policy == "in/allow" and "matches spiffe://td/ns/*/sa/b" in d.reason


@pytest.mark.parametrize("bad", ["td/ns/a", "spiffe://td/**/x", "spiffe://*/ns/a", "spiffe://td/ns/a*b",
                                 "spiffe://td/ns//a"])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(ValueError):
        AllowList([bad])


def test_allow_any():
    assert AllowAny().decide(info(None)).allowed
