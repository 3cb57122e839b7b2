"""SecretCache: per identity one `Material`, one shared `Roots`, and who to tell when either changes.

Pure bookkeeping (no asyncio, no I/O): the issuance/rotation loop puts materials in, the SDS and
Workload API streams subscribe per identity. `put` replaces a material whole and notifies the
identity's subscribers once, synchronously, with the set of things that changed, so a rotation
that also brings a new root is announced as one event (`{"default", "ROOTCA"}`), and a stream can
answer it with one response: key, certificate and root never drift apart.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Protocol, Sequence

from cryptography import x509

from secmesh.agent.material import Material, Roots, merge_roots
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.identity.spiffe import SpiffeId

KEY_CERT = "default"   # change kind: this identity's key + certificate chain
ROOTS = "ROOTCA"       # change kind: the trust anchors
REAUTH = "reauth"      # event: renewal was refused for the held token; streams with expired tokens must reconnect


class Subscriber(Protocol):
    def notify(self, changed: frozenset[str]) -> None:
        """Called synchronously by the cache; must not block (set an event, append to a set)."""
        ...


@dataclass(frozen=True)
class ExpirySnapshot:
    leaves: list[tuple[str, float]]
    root_seconds: float | None


class SecretCache:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._materials: dict[SpiffeId, Material] = {}
        self._subscribers: dict[SpiffeId, set[Subscriber]] = {}
        self._root_watchers: set[Subscriber] = set()
        self._file_roots: tuple[x509.Certificate, ...] = ()
        self._ca_roots: tuple[x509.Certificate, ...] = ()
        self._roots = Roots()
        self._versions = itertools.count(1)

    # --- materials -------------------------------------------------------------------------
    def get(self, spiffe_id: SpiffeId) -> Material | None:
        return self._materials.get(spiffe_id)

    def identities(self) -> list[SpiffeId]:
        return list(self._materials)

    def put(self, material: Material) -> Material:
        """Store `material` (with a fresh, process-wide increasing version) and notify subscribers."""
        stored = material.with_version(next(self._versions))
        self._materials[stored.spiffe_id] = stored
        roots_changed = self._update_roots(ca_roots=material.roots) if material.roots else False
        own = self._subscribers.get(stored.spiffe_id, set())
        for sub in list(own):
            sub.notify(frozenset({KEY_CERT, ROOTS}) if roots_changed else frozenset({KEY_CERT}))
        if roots_changed:
            self._notify_roots(exclude=own)
        return stored

    def notify(self, spiffe_id: SpiffeId, event: frozenset[str]) -> None:
        """Send an event (e.g. `REAUTH`) to every subscriber of one identity."""
        for sub in list(self._subscribers.get(spiffe_id, ())):
            sub.notify(event)

    def evict(self, spiffe_id: SpiffeId) -> Material | None:
        return self._materials.pop(spiffe_id, None)

    # --- roots -----------------------------------------------------------------------------
    @property
    def roots(self) -> Roots:
        return self._roots

    def set_file_roots(self, certs: Sequence[x509.Certificate]) -> bool:
        """Roots from the configured bundle file (served before any issuance, kept across CA root changes)."""
        changed = self._update_roots(file_roots=tuple(certs))
        if changed:
            self._notify_roots(exclude=set())
        return changed

    def _update_roots(self, *, ca_roots: tuple[x509.Certificate, ...] | None = None,
                      file_roots: tuple[x509.Certificate, ...] | None = None) -> bool:
        if ca_roots is not None:
            self._ca_roots = ca_roots
        if file_roots is not None:
            self._file_roots = file_roots
        merged = merge_roots(self._ca_roots, self._file_roots)
        if merged == self._roots.certs:  # x509.Certificate compares by DER
            return False
        self._roots = Roots.of(merged, next(self._versions))
        return True

    def _notify_roots(self, exclude: set[Subscriber]) -> None:
        event = frozenset({ROOTS})
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                if sub not in exclude:
                    sub.notify(event)
        for sub in list(self._root_watchers):
            if sub not in exclude:
                sub.notify(event)

    # --- subscriptions ---------------------------------------------------------------------
    def subscribe(self, spiffe_id: SpiffeId | None, sub: Subscriber) -> None:
        """Watch one identity (key/cert and roots), or only the roots when `spiffe_id` is None."""
        if spiffe_id is None:
            self._root_watchers.add(sub)
        else:
            self._subscribers.setdefault(spiffe_id, set()).add(sub)

    def unsubscribe(self, spiffe_id: SpiffeId | None, sub: Subscriber) -> None:
        if spiffe_id is None:
            self._root_watchers.discard(sub)
            return
        subs = self._subscribers.get(spiffe_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[spiffe_id]

    def subscriber_count(self, spiffe_id: SpiffeId) -> int:
        return len(self._subscribers.get(spiffe_id, ()))

    # --- observability ---------------------------------------------------------------------
    def expiry_snapshot(self, now: dt.datetime | None = None) -> ExpirySnapshot:
        now = now or self._clock.now()
        leaves = [(str(sid), m.seconds_left(now)) for sid, m in self._materials.items()]
        earliest = self._roots.earliest_expiry()
        return ExpirySnapshot(leaves, (earliest - now).total_seconds() if earliest else None)
