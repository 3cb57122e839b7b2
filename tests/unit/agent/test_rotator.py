"""IdentityManager against an in-process CA: single-flight issuance, rotation, outages, eviction."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from secmesh.agent.attest import Attested
from secmesh.agent.ca_client import Backoff
from secmesh.agent.cache import KEY_CERT, SecretCache
from secmesh.agent.rotator import IdentityManager
from secmesh.identity.tokens import StaticJwks, TokenValidator
from tests.support.tokens import TokenIssuer
from tests.unit.agent.memca import TD, MemCa

FAST = Backoff(initial=0.05, maximum=0.2, jitter=0.0)


class Sub:
    def __init__(self) -> None:
        self.events: list[frozenset[str]] = []

    def notify(self, changed: frozenset[str]) -> None:
        self.events.append(changed)


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture
def setup(tmp_path: Path, issuer: TokenIssuer):
    ca = MemCa(tmp_path / "ca", issuer)
    validator = TokenValidator(StaticJwks.from_dict(issuer.jwks()), trust_domain=TD)

    def attested(ns: str = "shop", sa: str = "cart", ttl: int = 3600) -> Attested:
        token = issuer.token(ns, sa, ttl=ttl)
        return Attested(validator.validate(token), token, "authorization")

    return ca, attested


def run(factory: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(factory())


def test_concurrent_first_requests_share_one_csr(setup) -> None:
    ca, attested = setup

    async def main() -> None:
        cache = SecretCache()
        mgr = IdentityManager(cache, ca, ttl_seconds=3600, backoff=FAST)
        ca.gate = asyncio.Event()
        who = attested()
        tasks = [asyncio.ensure_future(mgr.get(who)) for _ in range(20)]
        await asyncio.sleep(0.05)
        ca.gate.set()
        results = await asyncio.gather(*tasks)
        assert ca.calls == 1 and len({id(m) for m in results}) == 1
        assert results[0].spiffe_id == who.identity.spiffe_id
        await mgr.get(who)  # cached
        assert ca.calls == 1
        await mgr.close()

    run(main)


def test_rotation_replaces_key_and_cert_and_notifies(setup) -> None:
    ca, attested = setup

    async def main() -> None:
        cache = SecretCache()
        mgr = IdentityManager(cache, ca, ttl_seconds=2, fraction=0.5, jitter=0.0, backoff=FAST)
        who = attested()
        sub = Sub()
        cache.subscribe(who.identity.spiffe_id, sub)
        first = await mgr.get(who)
        await until(lambda: any(KEY_CERT in e for e in sub.events[1:]), timeout=6)
        second = cache.get(who.identity.spiffe_id)
        # fired at half of the remaining lifetime measured from receipt (Istio's CreatedTime), not from the
        # CA's NotBefore, which is backdated by 2 minutes and would make a 2s leaf rotate immediately
        half = first.created_at + (first.not_after - first.created_at) / 2
        assert half <= second.created_at < first.not_after
        assert second.version > first.version and second.key is not first.key
        assert second.leaf.public_key() == second.key.public_key()
        await mgr.close()

    run(main)


def test_ca_outage_keeps_cached_cert_logs_risk_and_pushes_on_recovery(setup, caplog) -> None:
    ca, attested = setup
    caplog.set_level(logging.WARNING, logger="secmesh.agent.rotator")

    async def main() -> None:
        cache = SecretCache()
        mgr = IdentityManager(cache, ca, ttl_seconds=2, fraction=0.5, jitter=0.0, backoff=FAST)
        who = attested()
        sub = Sub()
        cache.subscribe(who.identity.spiffe_id, sub)
        first = await mgr.get(who)
        ca.fail_next = 3
        await until(lambda: ca.fail_next == 0, timeout=4)
        assert cache.get(who.identity.spiffe_id) is first  # still serving the cached material
        await until(lambda: cache.get(who.identity.spiffe_id) is not first, timeout=4)
        assert sub.events[-1] == frozenset({KEY_CERT})
        await mgr.close()

    run(main)
    risk = [r for r in caplog.records if "renewal failed" in r.getMessage()]
    assert len(risk) == 3
    fields = risk[0].fields  # type: ignore[attr-defined]
    assert fields["at_risk"].endswith("/ns/shop/sa/cart") and fields["reason"] == "unavailable"
    assert fields["expires_at"] and fields["seconds_left"] > 0


def test_refused_token_waits_for_a_new_token(setup) -> None:
    ca, attested = setup

    async def main() -> None:
        cache = SecretCache()
        slow = Backoff(initial=5, maximum=5, jitter=0.0)
        mgr = IdentityManager(cache, ca, ttl_seconds=2, fraction=0.5, jitter=0.0, backoff=slow)
        who = attested()
        cache.subscribe(who.identity.spiffe_id, Sub())
        first = await mgr.get(who)
        ca.fail_next, ca.fail_reason = 1, "unauthenticated"
        await until(lambda: ca.fail_next == 0, timeout=4)
        await asyncio.sleep(0.1)
        mgr.remember(attested(ttl=7200))  # a stream arrives with a fresher token
        await until(lambda: cache.get(who.identity.spiffe_id) is not first, timeout=2)  # not after 5s backoff
        await mgr.close()

    run(main)


def test_unwatched_identities_are_dropped_pinned_ones_renewed(setup) -> None:
    ca, attested = setup

    async def main() -> None:
        cache = SecretCache()
        mgr = IdentityManager(cache, ca, ttl_seconds=1, fraction=0.5, jitter=0.0, backoff=FAST)
        lonely, own = attested("a", "lonely"), attested("a", "own")
        mgr.pinned.add(own.identity.spiffe_id)
        await mgr.get(lonely)
        first_own = await mgr.get(own)
        await until(lambda: cache.get(lonely.identity.spiffe_id) is None, timeout=3)
        await until(lambda: cache.get(own.identity.spiffe_id) is not first_own, timeout=3)
        await mgr.close()

    run(main)
