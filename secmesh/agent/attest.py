"""Who is calling: a workload's service-account JWT from the call metadata or the token file → identity.

The seed's design (Istio 1.1–1.3 node agent, reference §2.7) has Envoy attach the workload's
JWT to every SDS stream, as binary metadata `istio_sds_credentials_header-bin` or as
`authorization`; today's istio-agent instead reads the pod's own token file
(`/var/run/secrets/tokens/istio-token`). Both are accepted, in istio's order of preference:
the `-bin` header, then `authorization`, then the file. grpcio exposes no peer credentials on a
UDS (pitfall P4), so the token *is* the attestation: it is validated locally (signature against
the JWKS, issuer, audience, exp/nbf) before the CA ever sees it, and a caller with no token gets
the file's identity only because the socket's directory and mode say it may (one pod per socket,
as istio mounts it).

Tokens are never logged; rejections log `token_summary` (iss/sub/exp) and the reason, and are
counted by reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from secmesh.agent.metrics import TOKENS_REJECTED
from secmesh.identity.tokens import TOKEN_REASONS, TokenError, TokenValidator, WorkloadIdentity, token_summary
from secmesh.log import log_event

BIN_HEADER = "istio_sds_credentials_header-bin"
AUTH_HEADER = "authorization"
MAX_TOKEN_BYTES = 16 * 1024

_log = logging.getLogger(__name__)
_rejected = {reason: TOKENS_REJECTED.labels(reason) for reason in TOKEN_REASONS}


def token_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str | None, str]:
    """(token, source) from gRPC metadata; (None, "") when no credential header is present.

    A header present more than once, empty, oversized or not text is refused (`malformed`)
    rather than guessed at, as istio's `getCredentialToken` refuses multiple values.
    """
    values: dict[str, list[str | bytes]] = {}
    for key, value in metadata or ():
        k = key.lower()
        if k in (BIN_HEADER, AUTH_HEADER):
            values.setdefault(k, []).append(value)
    for header in (BIN_HEADER, AUTH_HEADER):
        found = values.get(header)
        if not found:
            continue
        if len(found) != 1:
            raise TokenError(f"credential header {header!r} must have exactly one value, got {len(found)}",
                             reason="malformed")
        raw = found[0]
        if isinstance(raw, bytes):
            if len(raw) > MAX_TOKEN_BYTES:
                raise TokenError(f"credential header {header!r} is too large", reason="malformed")
            try:
                raw = raw.decode("ascii")
            except UnicodeDecodeError:
                raise TokenError(f"credential header {header!r} is not ASCII", reason="malformed") from None
        text = raw.strip()
        if header == AUTH_HEADER:
            scheme, _, rest = text.partition(" ")
            if scheme.lower() == "bearer":
                text = rest.strip()
        if not text:
            raise TokenError(f"credential header {header!r} is empty", reason="missing")
        if len(text) > MAX_TOKEN_BYTES:
            raise TokenError(f"credential header {header!r} is too large", reason="malformed")
        return text, header
    return None, ""


@dataclass(frozen=True)
class Attested:
    identity: WorkloadIdentity
    token: str = field(repr=False)
    source: str   # BIN_HEADER, AUTH_HEADER or "file"

    def must_reconnect(self, now: dt.datetime) -> bool:
        """A stream attested by call metadata whose token has expired can only be renewed after the
        client reconnects with a fresh token (the file is re-read by the agent itself)."""
        return self.source != "file" and self.identity.expires_at <= now


class Attestor:
    def __init__(self, validator: TokenValidator, token_file: Path | str | None) -> None:
        self.validator = validator
        self.token_file = Path(token_file) if token_file else None
        self.remote = bool(getattr(validator.keys, "remote", False))

    def read_token_file(self) -> str | None:
        """The agent's own workload token, re-read every time (projected tokens are rotated by kubelet)."""
        if self.token_file is None:
            return None
        try:
            data = self.token_file.read_bytes()[: MAX_TOKEN_BYTES + 1]
        except OSError:
            return None
        text = data.decode("ascii", "replace").strip()
        return text or None

    def attest(self, metadata: Iterable[tuple[str, str | bytes]] | None, *, what: str = "call") -> Attested:
        """Validate the caller's token; TokenError (counted and logged) when there is none or it is bad."""
        token: str | None = None
        source = ""
        try:
            token, source = token_from_metadata(metadata)
            if token is None:
                token, source = self.read_token_file(), "file"
            if token is None:
                where = f" and token file {self.token_file} is unreadable" if self.token_file else ""
                raise TokenError(f"no credential in the call metadata{where}", reason="missing")
            identity = self.validator.validate(token)
        except TokenError as exc:
            _rejected.get(exc.reason, TOKENS_REJECTED.labels(exc.reason)).inc()
            log_event(_log, logging.WARNING, "workload token rejected", what=what, reason=exc.reason,
                      error=exc.message, source=source or "none", **token_summary(token))
            raise
        return Attested(identity, token, source)

    async def attest_async(self, metadata: Iterable[tuple[str, str | bytes]] | None, *,
                           what: str = "call") -> Attested:
        """`attest` off the event loop when the JWKS may be fetched over the network."""
        if self.remote:
            return await asyncio.to_thread(self.attest, list(metadata or ()), what=what)
        return self.attest(metadata, what=what)
