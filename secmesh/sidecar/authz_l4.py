"""Connection-time (L4) authorization: one Protocol, and the ghostunnel-style allow list behind it.

The listener asks `decide(ConnectionInfo)` right after the handshake, before a byte of the
peer's data is read. `allowed=False` means the connection is aborted now; `residual` is kept
for a codec layer when the engine cannot decide without request attributes. The policy engine
(`secmesh.policy`) sits behind the same Protocol (`authz_policy.PolicyAuthorizer`).

`AllowList` mirrors ghostunnel's `--allow-uri`: `*` matches exactly one path segment, `**` as
the last segment matches any remaining path (one or more segments). The server side fails
closed: an empty list denies everyone unless `allow_all` is set explicitly (which also admits
plaintext connections, whose principal is None, as Istio does without a principal rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What is known about a connection when the handshake has just completed."""

    principal: SpiffeId | None      # the verified peer ID (None for plaintext)
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int
    sni: str | None = None
    listener: str = ""
    tls: bool = True


@dataclass(frozen=True, slots=True)
class L4Decision:
    allowed: bool
    reason: str                     # human text for the log (names the policy and its file:line:col)
    policy: str | None = None       # metric label: which policy / list decided
    residual: object | None = None  # engine residual for the L7 layer (policy engine only)
    code: str = ""                  # closed reason (metric label)
    ref: object | None = None       # the engine's RuleRef when a policy decided (namespace/name/rule/pos)
    engine: object | None = None    # the policy Engine that made `residual`: finish it with this one
                                    # (`engine.decide_request(residual, req)`), even after a reload


class ConnectionAuthorizer(Protocol):
    def decide(self, info: ConnectionInfo) -> L4Decision:
        """Decide from connection attributes only; never does I/O."""
        ...


class _Pattern:
    """One compiled allow-list entry: a SPIFFE ID with optional `*` / trailing `**` segments."""

    __slots__ = ("text", "prefix", "segments", "trailing_any")

    def __init__(self, text: str) -> None:
        if not text.startswith("spiffe://"):
            raise ValueError(f"allow pattern {text!r}: must start with spiffe://")
        rest = text[len("spiffe://"):]
        td, _, path = rest.partition("/")
        parts = path.split("/") if path else []
        if "**" in parts[:-1]:
            raise ValueError(f"allow pattern {text!r}: `**` is only allowed as the last segment")
        self.trailing_any = bool(parts) and parts[-1] == "**"
        if self.trailing_any:
            parts = parts[:-1]
        if "*" in td or "**" in td:
            raise ValueError(f"allow pattern {text!r}: wildcards are not allowed in the trust domain")
        for p in parts:
            if p != "*" and "*" in p:
                raise ValueError(f"allow pattern {text!r}: `*` must be a whole segment")
        if "*" not in parts and not self.trailing_any:
            try:
                SpiffeId.parse(text)
            except InvalidSpiffeId as exc:
                raise ValueError(f"allow pattern {text!r}: {exc}") from None
        self.text = text
        self.prefix = td
        self.segments = tuple(parts)

    def matches(self, sid: SpiffeId) -> bool:
        if sid.trust_domain.name != self.prefix:
            return False
        got = sid.path.split("/")[1:] if sid.path else []
        n = len(self.segments)
        if self.trailing_any:
            if len(got) <= n:
                return False
        elif len(got) != n:
            return False
        for want, have in zip(self.segments, got):
            if want != "*" and want != have:
                return False
        return True


class AllowList:
    """ghostunnel-style `--allow-uri` list; exact IDs are a set lookup, patterns are scanned."""

    def __init__(self, patterns: Sequence[str], *, allow_all: bool = False, name: str = "allow_principals") -> None:
        self.name = name
        self.allow_all = allow_all
        self._exact: frozenset[str] = frozenset(p for p in patterns if "*" not in p and _is_id(p))
        self._patterns = tuple(_Pattern(p) for p in patterns if p not in self._exact)

    def decide(self, info: ConnectionInfo) -> L4Decision:
        if self.allow_all and not self._exact and not self._patterns:
            return L4Decision(True, "allow_all", self.name, code="allow_all")
        if info.principal is None:
            return L4Decision(False, "no verified peer identity", self.name, code="no_peer_identity")
        text = str(info.principal)
        if text in self._exact:
            return L4Decision(True, f"principal {text} allowed", self.name, code="allow_list")
        for p in self._patterns:
            if p.matches(info.principal):
                return L4Decision(True, f"principal {text} matches {p.text}", self.name, code="allow_list")
        if not self._exact and not self._patterns:
            return L4Decision(False, "allow list is empty (fail closed; set allow_all to admit any peer)", self.name,
                              code="empty_allow_list")
        return L4Decision(False, f"principal {text} is not in the allow list", self.name, code="not_in_allow_list")


class AllowAny:
    """Admit any connection: used for plaintext ports (DISABLE) and outbound listeners."""

    def decide(self, info: ConnectionInfo) -> L4Decision:
        return L4Decision(True, "no authorization on this listener", None, code="no_authz")


def _is_id(text: str) -> bool:
    try:
        SpiffeId.parse(text)
    except InvalidSpiffeId:
        return False
    return True
