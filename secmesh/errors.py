"""One exception hierarchy for the whole project.

Every failure that can reach a user carries a stable, closed `reason` (used as a metric label
and in logs) plus a human message. Cores raise these; I/O shells map them to exit codes,
gRPC status codes or HTTP answers in exactly one place each.
"""

from __future__ import annotations


class SecmeshError(Exception):
    """Base of every error secmesh raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class ConfigError(SecmeshError):
    """A configuration file or flag is wrong; `location` is `file:line:col` when known."""

    reason = "config"

    def __init__(self, message: str, *, location: str | None = None, field: str | None = None,
                 reason: str | None = None) -> None:
        self.location = location
        self.field = field
        prefix = f"{location}: " if location else ""
        super().__init__(f"{prefix}{message}", reason=reason)


class IdentityError(SecmeshError):
    """A SPIFFE ID, certificate, chain, CSR or token failed validation."""

    reason = "identity"


class PolicyError(SecmeshError):
    """A policy document is invalid or unsupported; `location` is `file:line:col` when known."""

    reason = "policy"

    def __init__(self, message: str, *, location: str | None = None, field: str | None = None,
                 reason: str | None = None) -> None:
        self.location = location
        self.field = field
        prefix = f"{location}: " if location else ""
        super().__init__(f"{prefix}{message}", reason=reason)


class CAError(SecmeshError):
    """The certificate authority refused or failed a request."""

    reason = "ca"


class SdsError(SecmeshError):
    """An SDS or Workload API exchange went wrong."""

    reason = "sds"


class ProtocolError(SecmeshError):
    """A peer sent bytes that violate the protocol it claims to speak."""

    reason = "protocol"
