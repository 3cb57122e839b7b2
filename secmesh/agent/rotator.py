"""IdentityManager: issue on first use, share per identity, rotate at fraction ± jitter, ride out CA outages.

One key and certificate per SPIFFE ID, however many streams ask (single-flight: concurrent
first requests for one identity make one CSR). After each issuance a per-identity task sleeps
until `identity.rotation.delay_until_rotation` (measured from when the agent *received* the
certificate, as istio-agent's `CreatedTime`, not from the CA's backdated NotBefore), then
renews with a fresh P-256 key. If the CA is unreachable it keeps the cached material, logs
which identity is at risk and when it expires, and retries with capped exponential backoff;
the moment a renewal succeeds the cache notifies every stream watching that identity. An
identity nobody watches any more (and that is not the agent's own workload) is dropped at its
rotation time instead of being renewed forever.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from typing import Callable, Protocol

from secmesh.agent.attest import Attested
from secmesh.agent.ca_client import Backoff, is_retryable
from secmesh.agent.cache import REAUTH, SecretCache
from secmesh.agent.material import Material, build_material
from secmesh.agent.metrics import CA_ERRORS, CA_LATENCY, CA_REQUESTS, ROTATIONS
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import CAError
from secmesh.identity.csr import build_csr
from secmesh.identity.keys import generate_p256
from secmesh.identity.rotation import delay_until_rotation
from secmesh.identity.spiffe import SpiffeId
from secmesh.log import log_event

_log = logging.getLogger(__name__)


class CertificateSigner(Protocol):
    async def sign(self, csr_pem: bytes | str, token: str, ttl_seconds: int) -> list[str]: ...


class IdentityManager:
    def __init__(self, cache: SecretCache, ca: CertificateSigner, *, ttl_seconds: float,
                 fraction: float = 0.5, jitter: float = 0.01, backoff: Backoff = Backoff(),
                 clock: Clock = SYSTEM_CLOCK, rand: Callable[[], float] = random.random,
                 file_identity: Callable[[], Attested | None] | None = None) -> None:
        self.cache = cache
        self.ca = ca
        self.ttl_seconds = ttl_seconds
        self.fraction = fraction
        self.jitter = jitter
        self.backoff = backoff
        self.clock = clock
        self.rand = rand
        self._file_identity = file_identity
        self._tokens: dict[SpiffeId, Attested] = {}
        self._token_arrived: dict[SpiffeId, asyncio.Event] = {}
        self._inflight: dict[SpiffeId, asyncio.Task[Material]] = {}
        self._loops: dict[SpiffeId, asyncio.Task[None]] = {}
        self.pinned: set[SpiffeId] = set()
        self._closed = False

    # --- tokens ----------------------------------------------------------------------------
    def remember(self, attested: Attested) -> None:
        """Keep the longest-lived valid token seen for an identity (used for its renewals)."""
        sid = attested.identity.spiffe_id
        held = self._tokens.get(sid)
        if held is None or attested.identity.expires_at >= held.identity.expires_at:
            self._tokens[sid] = attested
            event = self._token_arrived.get(sid)
            if event is not None:
                event.set()

    def _token_for(self, sid: SpiffeId) -> str:
        if self._file_identity is not None and sid in self.pinned:
            try:
                fresh = self._file_identity()
            except Exception:  # noqa: BLE001 - a bad token file falls back to the last good token
                fresh = None
            if fresh is not None and fresh.identity.spiffe_id == sid:
                self.remember(fresh)
        held = self._tokens.get(sid)
        if held is None:
            raise CAError(f"no token held for {sid}", reason="unauthenticated")
        return held.token

    # --- issuance --------------------------------------------------------------------------
    async def get(self, attested: Attested) -> Material:
        """The identity's current material, issuing it first if there is none (or it expired)."""
        self.remember(attested)
        sid = attested.identity.spiffe_id
        material = self.cache.get(sid)
        if material is not None and not material.expired(self.clock.now()):
            self._ensure_loop(sid)
            return material
        return await self.issue(sid)

    async def issue(self, sid: SpiffeId) -> Material:
        """Single-flight issuance: all concurrent callers for `sid` share one CSR round trip."""
        task = self._inflight.get(sid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._issue(sid))
            self._inflight[sid] = task
            task.add_done_callback(lambda t, s=sid: self._finished(s, t))
        return await asyncio.shield(task)

    def _finished(self, sid: SpiffeId, task: asyncio.Task[Material]) -> None:
        if self._inflight.get(sid) is task:
            del self._inflight[sid]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone away (stream closed)

    async def _issue(self, sid: SpiffeId) -> Material:
        token = self._token_for(sid)
        started = time.monotonic()
        key = generate_p256()
        csr = build_csr(key, sid)
        try:
            chain = await self.ca.sign(csr, token, int(self.ttl_seconds))
            material = build_material(sid, key, chain, self.clock.now())
        except CAError as exc:
            CA_REQUESTS.labels("error").inc()
            CA_ERRORS.labels(exc.reason).inc()
            raise
        CA_REQUESTS.labels("ok").inc()
        CA_LATENCY.observe(time.monotonic() - started)
        previous = self.cache.get(sid)
        stored = self.cache.put(material)
        log_event(_log, logging.INFO, "certificate issued", spiffe_id=str(sid), serial=stored.serial_hex,
                  not_after=stored.not_after.isoformat(), version=stored.version,
                  replaced=previous.serial_hex if previous else None)
        self._ensure_loop(sid)
        return stored

    # --- rotation --------------------------------------------------------------------------
    def _ensure_loop(self, sid: SpiffeId) -> None:
        loop_task = self._loops.get(sid)
        if (loop_task is None or loop_task.done()) and not self._closed:
            self._loops[sid] = asyncio.get_running_loop().create_task(self._rotation_loop(sid))

    def rotation_delay(self, material: Material, now: dt.datetime) -> float:
        return delay_until_rotation(now, material.created_at, material.not_after, self.fraction,
                                    self.jitter, self.rand).total_seconds()

    async def _rotation_loop(self, sid: SpiffeId) -> None:
        try:
            while not self._closed:
                material = self.cache.get(sid)
                if material is None:
                    return
                await asyncio.sleep(self.rotation_delay(material, self.clock.now()))
                if self.cache.get(sid) is not material:
                    continue  # someone (an expired-cert request) already replaced it
                if sid not in self.pinned and self.cache.subscriber_count(sid) == 0:
                    self.cache.evict(sid)
                    self._tokens.pop(sid, None)
                    log_event(_log, logging.INFO, "identity dropped: nobody watches it", spiffe_id=str(sid))
                    return
                await self._renew(sid)
        except asyncio.CancelledError:
            pass
        finally:
            if self._loops.get(sid) is asyncio.current_task():
                del self._loops[sid]

    async def _renew(self, sid: SpiffeId) -> None:
        attempt = 0
        while not self._closed:
            try:
                await self.issue(sid)
                ROTATIONS.inc()
                return
            except CAError as exc:
                material = self.cache.get(sid)
                now = self.clock.now()
                delay = self.backoff.delay(attempt, self.rand)
                left = material.seconds_left(now) if material else 0.0
                log_event(_log, logging.ERROR if left <= 0 else logging.WARNING,
                          "certificate renewal failed; serving the cached certificate" if left > 0
                          else "certificate renewal failed and the cached certificate has EXPIRED",
                          at_risk=str(sid), reason=exc.reason, error=exc.message, attempt=attempt + 1,
                          expires_at=material.not_after.isoformat() if material else None,
                          seconds_left=round(left, 1), retry_in=round(delay, 2))
                attempt += 1
                if not is_retryable(exc):
                    # only a new token can help: ask streams holding expired tokens to reconnect with a
                    # fresh one (istio's 1.1 node agent closed the stream for this), then wait for it
                    self.cache.notify(sid, frozenset({REAUTH}))
                    event = self._token_arrived.setdefault(sid, asyncio.Event())
                    event.clear()
                    try:
                        await asyncio.wait_for(event.wait(), timeout=max(delay, self.backoff.maximum))
                    except asyncio.TimeoutError:
                        pass
                    continue
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._loops.values(), *self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
