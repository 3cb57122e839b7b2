"""`istio.v1.auth.IstioCertificateService/CreateCertificate`: authn → CSR check → sign → log.

The handler is thin: it pulls the bearer token out of the call metadata, asks the token
validator who the caller is (`TokenCache`), hands the CSR to `batch` (where `ca.csrcheck`
judges it and `ca.signer` signs it, several requests back to back, and whose one future
resolves only once the issuance record is committed to the ledger: group commit, see
`recorder`), and answers with leaf, intermediate, roots. Every refusal goes through `_reject`: one gRPC status with a short
reason for the peer, one JSON log line with the details (token `iss`/`sub`/`exp` only) and one
metric increment; the server keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import grpc

from secmesh.ca import metrics
from secmesh.ca.batch import SigningBatch
from secmesh.ca.recorder import BatchRecorder
from secmesh.ca.signer import Signer
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import CAError
from secmesh.identity.csr import CsrError
from secmesh.identity.tokens import TokenError, TokenValidator, WorkloadIdentity, token_summary
from secmesh.log import log_event
from secmesh.proto import ca_pb2, ca_pb2_grpc

_log = logging.getLogger("secmesh.ca.service")
BEARER = "bearer "


def bearer_token(metadata: Any) -> str | None:
    """The JWT from `authorization: Bearer <jwt>` (scheme case-insensitive), or None."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[:7].lower() == BEARER:
            return value[7:].strip() or None
    return None


class TokenCache:
    """Validated tokens, so an agent renewing many workloads with one token pays for one signature check.

    Only successes are cached, each for at most `max_age` seconds (a key removed from the JWKS
    stops working within that time) and never past the token's own `exp`, re-checked on every hit.
    """

    def __init__(self, validator: TokenValidator, *, max_entries: int = 10_000, max_age: float = 300.0,
                 monotonic: Any = time.monotonic) -> None:
        self.validator = validator
        self.max_entries = max_entries
        self.max_age = max_age
        self._monotonic = monotonic
        # token -> (identity, monotonic time after which it must be validated again, exp + leeway as a timestamp)
        self._entries: OrderedDict[str, tuple[WorkloadIdentity, float, float]] = OrderedDict()

    def lookup(self, token: str) -> WorkloadIdentity | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        identity, stale_at, expired_at = entry
        if self._monotonic() > stale_at or expired_at <= self.validator.clock.now().timestamp():
            del self._entries[token]
            return None
        return identity

    def store(self, token: str, identity: WorkloadIdentity) -> None:
        # the validator refuses `exp <= now - leeway`; a hit is refused from the same instant on
        self._entries[token] = (identity, self._monotonic() + self.max_age,
                                identity.expires_at.timestamp() + self.validator.leeway)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def validate(self, token: str | None) -> WorkloadIdentity:
        """Synchronous validate-with-cache (what the event loop calls when keys are local)."""
        if token:
            hit = self.lookup(token)
            if hit is not None:
                return hit
        identity = self.validator.validate(token)
        self.store(token, identity)  # type: ignore[arg-type]
        return identity


class CertificateService(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(self, signer: Signer, tokens: TokenCache, recorder: BatchRecorder, *, issuer_kid: str,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        # signer and issuer key id travel together: one reference, replaced whole by `swap` (ca rotate)
        self._issuing: tuple[Signer, str] = (signer, issuer_kid)
        self.tokens = tokens
        self.recorder = recorder
        self.clock = clock
        self.batch = SigningBatch(clock.now, recorder=recorder)
        # a remote JWKS may block on HTTP: validate off the loop then (cache hits stay on it)
        self._remote_keys = bool(getattr(tokens.validator.keys, "remote", False))

    @property
    def signer(self) -> Signer:
        return self._issuing[0]

    @property
    def issuer_kid(self) -> str:
        return self._issuing[1]

    def swap(self, signer: Signer, issuer_kid: str) -> None:
        """Sign with a new issuing CA from the next request on (requests in flight finish on the old one)."""
        self._issuing = (signer, issuer_kid)

    async def CreateCertificate(self, request: ca_pb2.IstioCertificateRequest,  # noqa: N802 - gRPC name
                                context: grpc.aio.ServicerContext) -> ca_pb2.IstioCertificateResponse:
        started = time.perf_counter()
        token = bearer_token(context.invocation_metadata())
        signer, issuer_kid = self._issuing
        try:
            # a cache hit (the usual case: an agent reuses its token) costs a dict lookup, on the loop;
            # a miss with a remote JWKS may block on HTTP, so it is validated off the loop
            identity = self.tokens.lookup(token) if token else None
            if identity is None:
                if self._remote_keys and token:
                    identity = await asyncio.to_thread(self.tokens.validate, token)
                else:
                    identity = self.tokens.validate(token)
            # one future: resolved once the leaf is signed *and* its issuance record committed
            issued = await self.batch.submit(signer, request.csr, identity.spiffe_id, request.validity_duration,
                                             record_as=(identity.subject, issuer_kid))
        except TokenError as exc:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, f"token_{exc.reason}",
                               f"request authenticate failure: {exc.reason}", exc, token)
        except CsrError as exc:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, exc.message, exc, token)
        except CAError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.reason == "ttl_too_long" else grpc.StatusCode.INTERNAL
            await self._reject(context, code, exc.reason if exc.reason == "ttl_too_long" else "internal",
                               exc.message, exc, token)
        except Exception as exc:  # noqa: BLE001 - never hand out a certificate the log does not hold
            await self._reject(context, grpc.StatusCode.INTERNAL, "internal", "internal error", exc, token)
        metrics.ISSUED.inc()
        metrics.SIGN_SECONDS.observe(time.perf_counter() - started)
        return ca_pb2.IstioCertificateResponse(cert_chain=signer.chain(issued))

    async def _reject(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str,
                      peer_message: str, exc: Exception, token: str | None) -> None:
        metrics.rejected(reason)
        log_event(_log, logging.WARNING, "certificate request rejected", reason=reason, status=code.name,
                  error=str(exc), peer=context.peer(), token=token_summary(token))
        await context.abort(code, peer_message)
