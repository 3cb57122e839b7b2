"""The agent's side of `istio.v1.auth.IstioCertificateService/CreateCertificate`, plus its backoff.

`Backoff` is pure (attempt → delay, randomness injected): capped exponential with ±jitter,
so a CA outage does not turn a node's identities into a synchronized retry storm. `CaClient`
is the thin grpc.aio shell: TLS to the CA trusting the configured root bundle, the workload's
token as `authorization: Bearer`, the PEM CSR and the requested TTL, as istio-agent's Citadel
client sends them. Failures become `CAError` with a closed `reason` and a `retryable` flag:
an unreachable or overloaded CA is retried, a refused token or CSR is not (retrying cannot
help until a new token arrives). On failure the root bundle file is re-read and the channel
rebuilt if it changed, as istio-agent rebuilds its connection to pick up a new istiod root.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import grpc.aio
from google.protobuf import struct_pb2

from secmesh.errors import CAError
from secmesh.log import log_event

_log = logging.getLogger(__name__)

CA_REASONS = ("unavailable", "timeout", "unauthenticated", "permission_denied", "invalid_argument",
              "resource_exhausted", "internal", "bad_response", "tls", "other")

_RETRYABLE = frozenset({"unavailable", "timeout", "resource_exhausted", "internal", "bad_response", "tls", "other"})

_CODE_REASON = {
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.CANCELLED: "unavailable",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
    grpc.StatusCode.FAILED_PRECONDITION: "invalid_argument",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
    grpc.StatusCode.INTERNAL: "internal",
    grpc.StatusCode.UNKNOWN: "other",
}


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, CAError) and exc.reason in _RETRYABLE


def reason_for(code: grpc.StatusCode, details: str = "") -> str:
    if code == grpc.StatusCode.UNAVAILABLE and ("ssl" in details.lower() or "handshake" in details.lower()):
        return "tls"
    return _CODE_REASON.get(code, "other")


@dataclass(frozen=True)
class Backoff:
    """Delay before retry `attempt` (0-based): `initial × multiplier^attempt`, capped, ±`jitter`."""

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * (self.multiplier ** min(attempt, 64)))
        spread = base * self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, min(self.maximum, base + spread))


class CaClient:
    """One TLS channel to the CA; `sign` is one CreateCertificate call."""

    def __init__(self, address: str, root_file: Path | str, *, server_name: str = "", timeout: float = 10.0,
                 max_reconnect_backoff: float = 5.0) -> None:
        self.address = address
        self.root_file = Path(root_file)
        self.server_name = server_name
        self.timeout = timeout
        self.max_reconnect_backoff = max_reconnect_backoff
        self._root_pem = b""
        self._channel: grpc.aio.Channel | None = None
        self._stub = None

    def _read_roots(self) -> bytes:
        try:
            return self.root_file.read_bytes()
        except OSError as exc:
            raise CAError(f"cannot read CA root bundle {self.root_file}: {exc.strerror}", reason="tls") from None

    def _connect(self) -> None:
        from secmesh.proto import ca_pb2_grpc

        self._root_pem = self._read_roots()
        options = [
            # reconnect quickly after a CA restart instead of grpc's default 120s cap
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(self.max_reconnect_backoff * 1000)),
        ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=self._root_pem)
        self._channel = grpc.aio.secure_channel(self.address, creds, options=options)
        self._stub = ca_pb2_grpc.IstioCertificateServiceStub(self._channel)

    async def _refresh_if_roots_changed(self) -> None:
        try:
            current = self._read_roots()
        except CAError:
            return
        if current != self._root_pem and self._channel is not None:
            log_event(_log, logging.INFO, "CA root bundle changed; reconnecting", root_file=str(self.root_file))
            old = self._channel
            self._channel = None
            await old.close()

    async def sign(self, csr_pem: bytes | str, token: str, ttl_seconds: int) -> list[str]:
        """The CA's `cert_chain` (leaf first, root last) or CAError."""
        from secmesh.proto import ca_pb2

        if self._channel is None:
            self._connect()
        assert self._stub is not None
        metadata = struct_pb2.Struct()
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem,
            validity_duration=int(ttl_seconds), metadata=metadata)
        try:
            response = await self._stub.CreateCertificate(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            await self._refresh_if_roots_changed()
            details = exc.details() or ""
            raise CAError(f"CreateCertificate failed: {exc.code().name}: {details}",
                          reason=reason_for(exc.code(), details)) from None
        chain = list(response.cert_chain)
        if len(chain) < 2:
            raise CAError(f"CA returned a chain of {len(chain)} certificate(s)", reason="bad_response")
        return chain

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()
