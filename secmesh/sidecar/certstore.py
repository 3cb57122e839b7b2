"""Where certificate sources deliver: validate, keep the last good, swap contexts, report readiness.

Both sources (SDS and files) call `offer(...)`. A refused offer (key ≠ cert, expired, bad PEM)
changes nothing: the last good material stays in use, and the refusal is logged and counted
with its reason, which the SDS client also sends back as a NACK.
"""

from __future__ import annotations

import asyncio
import logging

from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import IdentityError
from secmesh.log import log_event
from secmesh.sidecar import metrics
from secmesh.sidecar.tls import CertMaterial, ContextHolder, TlsState, validate_material

log = logging.getLogger("secmesh.sidecar.certs")


class CertStore:
    def __init__(self, holder: ContextHolder, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.holder = holder
        self.clock = clock
        self.ready = asyncio.Event()
        self.last_error: str | None = None
        self.source: str | None = None
        metrics.CERT_EXPIRY.labels("leaf").set_function(self._leaf_ttl)
        metrics.CERT_EXPIRY.labels("root").set_function(self._root_ttl)

    @property
    def material(self) -> CertMaterial | None:
        state = self.holder.state
        return state.material if state else None

    def offer(self, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes, *, source: str) -> IdentityError | None:
        """Validate and apply; return the refusal (and keep the last good) or None when applied."""
        try:
            material = validate_material(chain_pem, key_pem, bundle_pem, now=self.clock.now())
        except IdentityError as exc:
            metrics.cert_updates(source, "rejected").inc()
            self.last_error = f"{exc.reason}: {exc.message}"
            log_event(log, logging.ERROR, "certificate refused; keeping the last good one", source=source,
                      reason=exc.reason, error=exc.message, holding=repr(self.material))
            return exc
        current = self.material
        if current is not None and (current.chain_pem, current.key_pem, current.bundle_pem) == \
                (material.chain_pem, material.key_pem, material.bundle_pem):
            return None   # a no-op push (same secret again)
        try:
            state = self.holder.update(material)
        except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
            metrics.cert_updates(source, "rejected").inc()
            err = IdentityError(f"cannot build a TLS context: {exc}", reason="bad_material")
            self.last_error = f"{err.reason}: {err.message}"
            log_event(log, logging.ERROR, "certificate refused; keeping the last good one", source=source,
                      reason=err.reason, error=err.message)
            return err
        metrics.cert_updates(source, "applied").inc()
        self.source = source
        self.last_error = None
        self._announce(state, source)
        return None

    def _announce(self, state: TlsState, source: str) -> None:
        m = state.material
        log_event(log, logging.INFO, "certificate applied", source=source, spiffe_id=str(m.spiffe_id),
                  not_after=m.not_after.isoformat(), fingerprint=m.fingerprint[:16], version=state.version)
        if not self.ready.is_set():
            self.ready.set()
            metrics.READY.set(1)

    def expired(self) -> bool:
        """True when the certificate held has run out: handshakes with it fail, so the sidecar is not ready."""
        m = self.material
        return m is not None and m.not_after <= self.clock.now()

    def _leaf_ttl(self) -> float:
        m = self.material
        return (m.not_after - self.clock.now()).total_seconds() if m else 0.0

    def _root_ttl(self) -> float:
        m = self.material
        return (m.roots_not_after - self.clock.now()).total_seconds() if m else 0.0
