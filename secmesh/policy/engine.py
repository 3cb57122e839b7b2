"""Decisions for one workload: `decide_connection` at accept time, `decide_request` per request.

Istio's order is CUSTOM → DENY → ALLOW (AUDIT only marks): deny if a DENY rule matches;
allow if no ALLOW policy applies; allow if an ALLOW rule matches; otherwise deny. We
evaluate it *partially*: with only connection attributes, each candidate rule is TRUE,
FALSE or RESIDUAL (depends on the request). If a DENY rule is already TRUE, or no ALLOW
rule can possibly match, the connection is refused before any byte is decoded; otherwise
the residual (the undecided rules) is finished per request, together with the L7 index
for rules that only look at the request. Dry-run policies run in shadow groups exactly
like Envoy's shadow engines: reported, never enforced.

PeerAuthentication is applied first: STRICT for the destination port plus a plaintext
peer is refused; DISABLE means no client certificate is requested, so the connection is
evaluated as plaintext.
"""

from __future__ import annotations

import gc
from typing import Any

from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.compile import TRUE, RESIDUAL, RuleSet, applicable, compile_rules
from secmesh.policy.decision import ConnectionDecision, Decision, Outcome, Reason, RuleRef, ShadowResult
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, MtlsMode, PolicySet, Workload
from secmesh.policy.peerauth import PeerAuthResolver

class Residual:
    """What a connection left undecided. Opaque to callers; pass it back to `decide_request`."""

    __slots__ = ("ruleset", "conn", "first", "pending", "final", "_split")

    def __init__(self, ruleset: RuleSet | None, conn: ConnAttrs, first: dict[str, int], pending: list[int],
                 final: Decision | None = None) -> None:
        self.ruleset = ruleset
        self.conn = conn
        self.first = first
        self.pending = pending
        self.final = final
        self._split: tuple[frozenset[int], tuple[int, ...]] | None = None

    def split(self) -> tuple[frozenset[int], tuple[int, ...]]:
        """(pending rules reachable through the L7 index, pending rules that must always be checked)."""
        if self._split is None:
            rules = self.ruleset.rules  # type: ignore[union-attr]
            first = self.first
            live = {i for i in self.pending if first.get(rules[i].group, i + 1) > i}  # later ones cannot win
            self._split = (frozenset(i for i in live if rules[i].l7_anchored),
                           tuple(i for i in live if not rules[i].l7_anchored))
        return self._split


class Engine:
    """The policy set compiled for one workload, for both `http` and `tcp` ports."""

    def __init__(self, policies: PolicySet, workload: Workload, root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> None:
        self.workload = workload
        self.root_namespace = root_namespace
        aps = applicable(policies, workload, root_namespace)
        # Compilation allocates tens of thousands of long-lived objects; letting the cyclic GC
        # rescan them repeatedly more than doubles compile time, and none of them form garbage.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.http, self.tcp = compile_rules(aps)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.peer = PeerAuthResolver(policies, workload, root_namespace)
        self._decisions: dict[tuple[int, ...], Decision] = {}

    # --- connection ------------------------------------------------------------------------

    def decide_connection(self, conn: ConnAttrs, protocol: str = "http") -> ConnectionDecision:
        mode, pa_ref = self.peer.resolve(conn.dest_port)
        if mode is MtlsMode.STRICT and conn.principal is None:
            d = Decision(False, Reason.MTLS_STRICT, pa_ref)
            return ConnectionDecision(Outcome.DENY, d, Residual(None, conn, {}, [], d))
        if mode is MtlsMode.DISABLE and conn.principal is not None:
            conn = conn.without_principal()
        rs = self.tcp if protocol == "tcp" else self.http
        first = rs.always_min.copy()
        pending: list[int] = []
        pmin: dict[str, int] = {}
        evaluate = list(rs.l4_scan)
        for b in rs.l4_index.buckets(conn):
            for g, i in b.true_min:
                f = first.get(g)
                if f is None or i < f:
                    first[g] = i
            if b.res:
                pending.extend(b.res)
                for g, i in b.res_min:
                    f = pmin.get(g)
                    if f is None or i < f:
                        pmin[g] = i
            if b.evaluate:
                evaluate.extend(b.evaluate)
        if evaluate:
            rules = rs.rules
            for rid in evaluate:
                r = rules[rid]
                g = r.group
                f = first.get(g)
                if f is not None and f < rid:
                    continue  # an earlier rule of this group already matched: it is the effective policy
                res = r.l4(conn)
                if res == TRUE:
                    first[g] = rid
                elif res == RESIDUAL:
                    pending.append(rid)
                    f = pmin.get(g)
                    if f is None or rid < f:
                        pmin[g] = rid
        residual = Residual(rs, conn, first, pending)
        return ConnectionDecision(self._outcome(rs, first, pmin), self._decision(rs, first), residual)

    @staticmethod
    def _undecided(rs: RuleSet, group: str, first: dict[str, int], pmin: dict[str, int]) -> bool:
        f = first.get(group)
        for lo in (rs.pure_l7_min.get(group), pmin.get(group)):
            if lo is not None and (f is None or lo < f):
                return True
        return False

    def _outcome(self, rs: RuleSet, first: dict[str, int], pmin: dict[str, int]) -> Outcome:
        if "deny" in first:
            return Outcome.DENY
        allow_open = rs.has_allow and "allow" not in first
        if allow_open and not self._undecided(rs, "allow", first, pmin):
            return Outcome.DENY  # no ALLOW rule can match whatever the request says
        if allow_open or self._undecided(rs, "deny", first, pmin):
            return Outcome.NEEDS_REQUEST
        return Outcome.ALLOW

    # --- request ---------------------------------------------------------------------------

    def decide_request(self, residual: Residual, req: RequestAttrs) -> Decision:
        """Finish a connection's residual with one request's attributes."""
        if residual.final is not None:
            return residual.final
        rs = residual.ruleset
        assert rs is not None
        first = residual.first
        rules = rs.rules
        cands: list[int] = []
        if residual.pending:
            reachable, always = residual.split()
            cands.extend(always)
        else:
            reachable = frozenset()
        if rs.l7_index.tables and (reachable or rs.pure_l7):
            pure = rs.pure_l7
            for b in rs.l7_index.buckets(req):
                for rid in b.ids:
                    if rid in pure or rid in reachable:
                        cands.append(rid)
        if rs.l7_scan:
            cands.extend(rs.l7_scan)
        if not cands:
            return self._decision(rs, first)
        first = first.copy()
        conn = residual.conn
        for rid in sorted(set(cands)):
            r = rules[rid]
            f = first.get(r.group)
            if f is not None and f < rid:
                continue
            if r.full(conn, req):
                first[r.group] = rid
        return self._decision(rs, first)

    def decide(self, conn: ConnAttrs, req: RequestAttrs | None = None, protocol: str = "http") -> Decision:
        """Both phases at once (the CLI and tests): the decision Istio would make for this request."""
        cd = self.decide_connection(conn, protocol)
        if protocol == "tcp":
            assert cd.decision is not None
            return cd.decision
        if req is None:
            raise ValueError("an http decision needs the request attributes")
        return self.decide_request(cd.residual, req)

    # --- decisions -------------------------------------------------------------------------

    def _decision(self, rs: RuleSet, first: dict[str, int]) -> Decision:
        get = first.get
        key = (rs is self.tcp, get("deny"), get("allow"), get("audit"), get("shadow_deny"), get("shadow_allow"))
        d = self._decisions.get(key)
        if d is None:
            d = self._decisions[key] = self._build(rs, first)
        return d

    @staticmethod
    def _build(rs: RuleSet, first: dict[str, int]) -> Decision:
        def ref(g: str) -> RuleRef | None:
            i = first.get(g)
            return rs.rules[i].ref if i is not None else None

        if "deny" in first:
            allowed, reason, policy = False, Reason.DENY_POLICY, ref("deny")
        elif rs.has_allow:
            policy = ref("allow")
            allowed, reason = (True, Reason.ALLOW_POLICY) if policy else (False, Reason.NO_ALLOW_MATCH)
        else:
            allowed, reason, policy = True, Reason.NO_ALLOW_POLICIES, None
        shadows = []
        if rs.has_shadow["shadow_deny"]:
            p = ref("shadow_deny")
            shadows.append(ShadowResult("DENY", "denied" if p else "allowed", p))
        if rs.has_shadow["shadow_allow"]:
            p = ref("shadow_allow")
            shadows.append(ShadowResult("ALLOW", "allowed" if p else "denied", p))
        audit = ref("audit")
        return Decision(allowed, reason, policy, audit is not None, audit, tuple(shadows))

    def stats(self) -> dict[str, Any]:
        return {"rules_http": len(self.http.rules), "rules_tcp": len(self.tcp.rules),
                "l4_indexed_kinds": self.http.l4_index.kinds(), "l7_indexed_kinds": self.http.l7_index.kinds(),
                "l4_scan": len(self.http.l4_scan), "l7_scan": len(self.http.l7_scan),
                "tcp_skipped_allow_rules": len(self.tcp.skipped)}
