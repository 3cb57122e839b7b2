"""The policy engine behind `ConnectionAuthorizer`: Istio AuthorizationPolicies at connection time.

Right after the handshake the listener hands over what is known (peer principal, source and
destination address, SNI); the engine evaluates the compiled set *partially*:

- DENY: the connection is aborted before a byte is read; the decision names the policy,
  rule and `file:line:col`.
- ALLOW: forwarded; the engine's residual is kept (audit / dry-run refinement per request).
- NEEDS_REQUEST: only request attributes can decide. The residual is handed to the L7 layer
  when there is one (`l7_available`); until then an `http` port fails closed with a log line
  saying so. A `tcp` port never needs the request (Istio's TCP rules drop or skip HTTP-only
  fields), so NEEDS_REQUEST there would be an engine bug: also refused. An `auto` port is
  decided with the HTTP rule set (it may turn out to be HTTP); if the connection then turns
  out to be TCP, `l7_conn.AutoConn` refuses a NEEDS_REQUEST one (`refuse_tcp`), as Istio's
  TCP filter chain fails closed on HTTP-only ALLOW rules.

The destination port given to the engine is the *workload* port (the app's port, what
`to.operation.ports` and `portLevelMtls` name), not the sidecar's listening port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from secmesh.policy.attrs import ConnAttrs
from secmesh.policy.decision import Decision, Outcome, RuleRef
from secmesh.sidecar import metrics
from secmesh.sidecar.authz_l4 import ConnectionInfo, L4Decision

if TYPE_CHECKING:
    from secmesh.sidecar.policy_source import PolicySnapshot, PolicySource

NEEDS_REQUEST_NO_L7 = "needs_request_no_l7"


def policy_label(ref: RuleRef | None) -> str:
    """Metric label / log id of the rule that decided: Envoy's `ns[..]-policy[..]-rule[i]` form."""
    if ref is None:
        return ""
    if ref.rule is None:
        return f"ns[{ref.namespace}]-peerauthentication[{ref.name}]"
    return ref.envoy_id


class PolicyAuthorizer:
    """L4 decisions for one inbound listener from the current `PolicySource` snapshot."""

    def __init__(self, source: PolicySource, *, listener: str, protocol: str, port: int,
                 l7_available: bool = False) -> None:
        self.source = source
        self.listener = listener
        self.protocol = protocol
        self.port = port
        self.l7_available = l7_available
        self._snap: PolicySnapshot | None = None
        self._final: dict[int, tuple[Decision, L4Decision]] = {}   # id(engine Decision) → reusable answer

    def decide(self, info: ConnectionInfo) -> L4Decision:
        snap = self.source.current
        if snap is not self._snap:     # a reload swapped the set: cached answers belong to the old one
            self._snap, self._final = snap, {}
        conn = ConnAttrs(str(info.principal) if info.principal is not None else None, info.source_ip, None,
                         info.destination_ip, self.port, info.sni)
        cd = snap.engine.decide_connection(conn, self.protocol)
        if cd.outcome is Outcome.NEEDS_REQUEST:
            if self.l7_available and self.protocol in ("http", "auto"):
                return L4Decision(True, "decided per request (L7)", "", cd.residual, "needs_request",
                                  engine=snap.engine)
            why = ("L7 authorization is not available yet" if self.protocol != "tcp"
                   else "a tcp port cannot evaluate request attributes")
            return L4Decision(False, f"policies need request attributes to decide ({why}); failing closed",
                              "", cd.residual, NEEDS_REQUEST_NO_L7, engine=snap.engine)
        d = cd.decision
        assert d is not None
        hit = self._final.get(id(d))
        if hit is None or hit[0] is not d:
            hit = (d, self._answer(d))
            self._final[id(d)] = hit
            self._count_dry_run(d)
        elif d.dry_run:
            self._count_dry_run(d)
        base = hit[1]
        return L4Decision(base.allowed, base.reason, base.policy, cd.residual, base.code, base.ref, snap.engine)

    @staticmethod
    def _answer(d: Decision) -> L4Decision:
        ref = d.policy
        return L4Decision(d.allowed, d.message(), policy_label(ref), None, d.reason.value, ref)

    def _count_dry_run(self, d: Decision) -> None:
        for s in d.dry_run:
            metrics.authz_dry_run(self.listener, s.action, s.result, policy_label(s.policy)).inc()


def refuse_tcp(decision_code: str) -> str | None:
    """`auto` port, connection sniffed as TCP: why it must be refused now, or None to splice it.

    Only a connection admitted as NEEDS_REQUEST ("decided per request") is refused: a TCP stream
    has no requests, so the rules that needed paths/methods/headers can never be evaluated, and
    Istio drops such ALLOW rules from the TCP filter chain (fail closed). Any other admitted
    connection was decided on connection attributes alone, which hold for TCP as well.
    """
    if decision_code == "needs_request":
        return ("policies need request attributes to decide, but the connection is not HTTP "
                "(protocol auto sniffed TCP); failing closed")
    return None
