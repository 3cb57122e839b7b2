"""SecretCache: whole-material replacement, increasing versions, one notification per change."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from secmesh.agent.cache import KEY_CERT, ROOTS, SecretCache
from secmesh.agent.material import build_material
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import SpiffeId
from tests.unit.identity import svidca

A = SpiffeId.parse("spiffe://example.org/ns/a/sa/a")
B = SpiffeId.parse("spiffe://example.org/ns/b/sa/b")


class Sub:
    def __init__(self) -> None:
        self.events: list[frozenset[str]] = []

    def notify(self, changed: frozenset[str]) -> None:
        self.events.append(changed)


@pytest.fixture(scope="module")
def cas():
    r1 = svidca.make_root()
    r2 = svidca.make_root()
    return (r1, svidca.make_intermediate(r1)), (r2, svidca.make_intermediate(r2))


def material(ca, sid):
    root, inter = ca
    key = generate_p256()
    leaf = svidca.make_leaf(inter, str(sid), key=key)
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf.cert, inter.cert, root.cert)]
    return build_material(sid, key, pems, svidca.NOW)


def test_put_replaces_whole_and_versions_increase(cas) -> None:
    cache = SecretCache()
    first = cache.put(material(cas[0], A))
    second = cache.put(material(cas[0], A))
    assert second.version > first.version
    assert cache.get(A) is second and cache.get(A).key is second.key
    assert cache.roots.certs == (cas[0][0].cert,)


def test_subscribers_of_the_identity_hear_key_cert_changes_only_theirs(cas) -> None:
    cache = SecretCache()
    sa, sb, roots_only = Sub(), Sub(), Sub()
    cache.subscribe(A, sa)
    cache.subscribe(B, sb)
    cache.subscribe(None, roots_only)
    cache.put(material(cas[0], A))  # first material also brings the first CA root
    assert sa.events == [frozenset({KEY_CERT, ROOTS})]  # one event: key, cert and root together
    assert sb.events == [frozenset({ROOTS})] and roots_only.events == [frozenset({ROOTS})]
    cache.put(material(cas[0], A))  # same root: only A's key/cert
    assert sa.events[-1] == frozenset({KEY_CERT}) and len(sb.events) == 1
    cache.put(material(cas[1], B))  # CA root changed: everyone hears ROOTCA
    assert sa.events[-1] == frozenset({ROOTS}) and sb.events[-1] == frozenset({KEY_CERT, ROOTS})
    assert cache.roots.certs[0] == cas[1][0].cert


def test_file_roots_are_kept_and_merged(cas) -> None:
    cache = SecretCache()
    sub = Sub()
    cache.subscribe(A, sub)
    assert cache.set_file_roots([cas[0][0].cert]) is True
    assert cache.set_file_roots([cas[0][0].cert]) is False  # unchanged: no event
    assert sub.events == [frozenset({ROOTS})]
    cache.put(material(cas[1], A))
    assert cache.roots.certs == (cas[1][0].cert, cas[0][0].cert)


def test_unsubscribe_and_evict(cas) -> None:
    cache = SecretCache()
    sub = Sub()
    cache.subscribe(A, sub)
    assert cache.subscriber_count(A) == 1
    cache.unsubscribe(A, sub)
    assert cache.subscriber_count(A) == 0
    cache.put(material(cas[0], A))
    assert sub.events == []
    assert cache.evict(A) is not None and cache.get(A) is None
    snap = cache.expiry_snapshot(svidca.NOW)
    assert snap.leaves == [] and snap.root_seconds is not None and snap.root_seconds > 0
