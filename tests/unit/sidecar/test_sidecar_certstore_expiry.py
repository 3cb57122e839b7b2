"""The sidecar stops reporting ready once the certificate it holds has expired."""

from __future__ import annotations

import datetime as dt

from secmesh.clock import FakeClock
from secmesh.sidecar.certstore import CertStore
from secmesh.sidecar.tls import ContextHolder
from tests.integration.sidecar.pki import TestCA, sa


def test_expired_turns_true_when_the_leaf_runs_out() -> None:
    ca = TestCA()
    leaf = ca.issue(sa("default", "web"), ttl=dt.timedelta(minutes=10))
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))
    store = CertStore(ContextHolder(), clock=clock)
    assert not store.expired()                          # nothing held yet: "not ready" is said elsewhere
    assert store.offer(leaf.chain_pem, leaf.key_pem, ca.pem, source="file") is None
    assert not store.expired()
    clock.advance(dt.timedelta(minutes=11))
    assert store.expired()
