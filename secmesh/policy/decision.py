"""What the engine answers, and why: action, the policy and rule that decided, audit, dry-run.

Envoy answers "RBAC: access denied"; we always name the policy (`ns[..]-policy[..]-rule[i]`,
the same id Envoy's RBAC uses, plus the source position) so that a denial can be traced
to a line of YAML. These objects are immutable and JSON-friendly (`to_dict`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from secmesh.policy.model import Pos


class Outcome(str, enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    NEEDS_REQUEST = "NEEDS_REQUEST"


class Reason(str, enum.Enum):
    """Closed vocabulary (metric label safe)."""

    DENY_POLICY = "deny_policy"              # a DENY rule matched
    ALLOW_POLICY = "allow_policy"            # an ALLOW rule matched
    NO_ALLOW_POLICIES = "no_allow_policies"  # no ALLOW policy applies: allowed by default
    NO_ALLOW_MATCH = "no_allow_match"        # ALLOW policies apply but none matched
    MTLS_STRICT = "mtls_strict_plaintext"    # PeerAuthentication STRICT refused a plaintext peer


@dataclass(frozen=True, slots=True)
class RuleRef:
    kind: str          # AuthorizationPolicy | PeerAuthentication
    namespace: str
    name: str
    rule: int | None   # index in spec.rules (None for PeerAuthentication)
    action: str
    pos: Pos

    @property
    def envoy_id(self) -> str:
        return f"ns[{self.namespace}]-policy[{self.name}]-rule[{self.rule}]"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                             "action": self.action, "source": str(self.pos)}
        if self.rule is not None:
            d["rule"] = self.rule
            d["id"] = self.envoy_id
        return d


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """Envoy's shadow engine for dry-run policies of one action: would it allow or deny?"""

    action: str              # ALLOW | DENY (the dry-run policies' action)
    result: str              # allowed | denied
    policy: RuleRef | None   # the dry-run rule that matched (the effective policy id)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "result": self.result,
                "policy": self.policy.to_dict() if self.policy else None}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason
    policy: RuleRef | None = None
    audit: bool = False
    audit_policy: RuleRef | None = None
    dry_run: tuple[ShadowResult, ...] = ()

    @property
    def action(self) -> str:
        return "ALLOW" if self.allowed else "DENY"

    def message(self) -> str:
        p = self.policy
        if self.reason is Reason.DENY_POLICY and p:
            return f"denied by DENY policy {p.namespace}/{p.name} rule {p.rule} ({p.pos})"
        if self.reason is Reason.ALLOW_POLICY and p:
            return f"allowed by ALLOW policy {p.namespace}/{p.name} rule {p.rule} ({p.pos})"
        if self.reason is Reason.NO_ALLOW_POLICIES:
            return "allowed: no ALLOW policy applies to the workload"
        if self.reason is Reason.MTLS_STRICT and p:
            return f"refused: PeerAuthentication {p.namespace}/{p.name} requires mTLS (STRICT) and the peer is plaintext"
        return "denied: ALLOW policies apply to the workload and none matched"

    def to_dict(self) -> dict[str, Any]:
        reason: dict[str, Any] = {"code": self.reason.value, "message": self.message()}
        if self.policy is not None:
            reason.update(self.policy.to_dict())
        return {"decision": self.action, "audit": self.audit, "reason": reason,
                "audit_policy": self.audit_policy.to_dict() if self.audit_policy else None,
                "dry_run": [s.to_dict() for s in self.dry_run]}


class ConnectionDecision:
    """Partial result: `decision` is final unless `outcome` is NEEDS_REQUEST.

    `residual` is what `Engine.decide_request` needs to finish (audit, dry-run and the exact
    effective policy are refined per request even when `outcome` is already final).
    A plain slotted class, not a frozen dataclass: one is built per connection.
    """

    __slots__ = ("outcome", "decision", "residual")

    def __init__(self, outcome: Outcome, decision: Decision | None, residual: Any) -> None:
        self.outcome = outcome
        self.decision = decision
        self.residual = residual

    def __repr__(self) -> str:
        return f"ConnectionDecision({self.outcome.value}, {self.decision!r})"
