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

Speed. Everything the index hits imply is a pure function of *which buckets* were hit, so
the merged L4 state (`_State`: first matching rule per group, pending rules, outcome,
decision, and which rules a request can still change) is memoized per bucket combination,
and the rules left to evaluate for a request per (state, L7 buckets). Only predicates the
index cannot decide are evaluated per connection (their TRUE/RESIDUAL pattern is memoized
too), and only candidate rules' `full()` per request. Memos are bounded and simply cleared
when full, so a peer that varies its attributes gets the cold path, never unbounded memory.
Once a DENY rule matched, ALLOW rules are not evaluated (they cannot change the decision);
AUDIT and dry-run groups still are, since the decision reports them.
"""

from __future__ import annotations

import gc
from typing import Any

from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.compile import TRUE, RESIDUAL, RuleSet, applicable, compile_rules
from secmesh.policy.decision import ConnectionDecision, Decision, Outcome, Reason, RuleRef, ShadowResult
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, MtlsMode, PolicySet, Workload
from secmesh.policy.peerauth import PeerAuthResolver

L4_MEMO_MAX = 4096      # connection states per rule set
DERIVED_MAX = 64        # evaluated-predicate patterns per state
DECISIONS_MAX = 65536   # distinct Decision objects kept for sharing
_INF = 1 << 62


class _State:
    """What a combination of L4 index hits (plus evaluated predicates) implies. Immutable once built,
    except for the L7 split (`closed`/`reachable`/`always`), filled in once by the first request."""

    __slots__ = ("first", "res_l7", "res_any", "pmin", "evaluate", "derived", "outcome", "decision", "closed",
                 "reachable", "always")

    def __init__(self, first: dict[str, int], res_l7: list[int], res_any: list[int], pmin: dict[str, int],
                 evaluate: tuple[int, ...] = ()) -> None:
        self.first = first
        self.res_l7 = res_l7              # RESIDUAL rules the L7 index can find again
        self.res_any = res_any            # RESIDUAL rules without an L7 anchor
        self.pmin = pmin
        self.evaluate = evaluate          # rules whose L4 part must be evaluated per connection
        self.derived: dict[tuple[int, ...], _State] = {}
        self.outcome: Outcome | None = None
        self.decision: Decision | None = None
        self.closed: bool | None = None   # None until the first request: no request attribute can change it
        self.reachable: frozenset[int] = frozenset()  # live res_l7
        self.always: tuple[int, ...] = ()             # live res_any


class Residual:
    """What a connection left undecided. Opaque to callers; pass it back to `decide_request`."""

    __slots__ = ("ruleset", "conn", "state", "final")

    def __init__(self, ruleset: RuleSet | None, conn: ConnAttrs, state: _State | None,
                 final: Decision | None = None) -> None:
        self.ruleset = ruleset
        self.conn = conn
        self.state = state
        self.final = final

    @property
    def pending(self) -> list[int]:
        """Rules whose connection part held but whose request part is still open."""
        st = self.state
        return sorted(set(st.res_l7) | set(st.res_any)) if st is not None else []


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
        self._pa_ports = dict(self.peer._ports)
        self._pa_default = (self.peer.default_mode, self.peer.default_ref)
        self._decisions: dict[tuple[Any, ...], Decision] = {}

    # --- connection ------------------------------------------------------------------------

    def decide_connection(self, conn: ConnAttrs, protocol: str = "http") -> ConnectionDecision:
        hit = self._pa_ports.get(conn.dest_port) if self._pa_ports else None
        mode, pa_ref = hit if hit is not None else self._pa_default
        if mode is MtlsMode.STRICT and conn.principal is None:
            d = Decision(False, Reason.MTLS_STRICT, pa_ref)
            return ConnectionDecision(Outcome.DENY, d, Residual(None, conn, None, d))
        if mode is MtlsMode.DISABLE and conn.principal is not None:
            conn = conn.without_principal()
        rs = self.tcp if protocol == "tcp" else self.http
        key = tuple(rs.l4_index.collect(conn, []))
        st = rs.memo.get(key)
        if st is None:
            st = self._merge(rs, key)
            if len(rs.memo) >= L4_MEMO_MAX:
                rs.memo.clear()
            rs.memo[key] = st
        if st.evaluate:
            st = self._evaluated(rs, st, conn)
        return ConnectionDecision(st.outcome, st.decision, Residual(rs, conn, st))  # type: ignore[arg-type]

    def _merge(self, rs: RuleSet, buckets: tuple[Any, ...]) -> _State:
        """Fold the hit buckets into one state (the cold path; memoized by the caller)."""
        first = rs.always_min.copy()
        res_l7: list[int] = []
        res_any: list[int] = []
        pmin: dict[str, int] = {}
        evaluate: list[int] = []
        for b in buckets:
            for g, i in b.true_min:
                if i < first.get(g, _INF):
                    first[g] = i
            if b.res:
                res_l7 += b.res_l7
                res_any += b.res_any
                for g, i in b.res_min:
                    if i < pmin.get(g, _INF):
                        pmin[g] = i
            if b.evaluate:
                evaluate += b.evaluate
        st = _State(first, res_l7, res_any, pmin)
        if evaluate or rs.l4_scan:
            st.evaluate = tuple(sorted(set(evaluate).union(rs.l4_scan)))
            return st
        st.outcome = self._outcome(rs, first, pmin)
        st.decision = self._decision(rs, first)
        return st

    def _evaluated(self, rs: RuleSet, base: _State, conn: ConnAttrs) -> _State:
        """Evaluate the L4 predicates the index could not decide; memoize by the result pattern."""
        rules = rs.rules
        first = base.first
        seen: list[int] = []          # rid for TRUE, ~rid for RESIDUAL
        for rid in base.evaluate:     # ascending: once a group has a TRUE rule, later ones are moot
            r = rules[rid]
            if first.get(r.group, _INF) < rid:
                continue
            res = r.l4(conn)
            if res == TRUE:
                if first is base.first:
                    first = dict(first)
                first[r.group] = rid
                seen.append(rid)
            elif res == RESIDUAL:
                seen.append(~rid)
        pattern = tuple(seen)
        st = base.derived.get(pattern)
        if st is not None:
            return st
        res_l7, res_any = list(base.res_l7), list(base.res_any)
        pmin = dict(base.pmin)
        for x in pattern:
            if x < 0:
                rid = ~x
                (res_l7 if rules[rid].l7_anchored else res_any).append(rid)
                g = rules[rid].group
                if rid < pmin.get(g, _INF):
                    pmin[g] = rid
        st = _State(first, res_l7, res_any, pmin)
        st.outcome = self._outcome(rs, first, pmin)
        st.decision = self._decision(rs, first)
        if len(base.derived) < DERIVED_MAX:
            base.derived[pattern] = st
        return st

    @staticmethod
    def _split(rs: RuleSet, st: _State) -> None:
        """Which pending rules a request can still make win (an earlier TRUE rule of the same group,
        or a TRUE DENY rule for ALLOW rules, makes the rest moot)."""
        first = st.first
        if not first:
            st.reachable, st.always = frozenset(st.res_l7), tuple(set(st.res_any))
            st.closed = not st.res_l7 and not st.res_any and not rs.pure_l7_min
            return
        groups = rs.groups
        deny = "deny" in first
        get = first.get
        st.reachable = frozenset(i for i in st.res_l7 if i < get(groups[i], _INF) and not (deny and groups[i] == "allow"))
        st.always = tuple({i for i in st.res_any if i < get(groups[i], _INF) and not (deny and groups[i] == "allow")})
        st.closed = not st.reachable and not st.always and not any(
            lo < get(g, _INF) and not (deny and g == "allow") for g, lo in rs.pure_l7_min.items())

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
        st = residual.state
        rs = residual.ruleset
        assert st is not None and st.decision is not None and rs is not None
        if st.closed is None:
            self._split(rs, st)
        if st.closed:
            return st.decision
        rules = rs.rules
        conn = residual.conn
        first = st.first
        copied = False
        reachable = st.reachable
        # Candidates in any order: a rule is skipped when its group already has an earlier
        # match (or DENY matched and it is an ALLOW rule), and a match always lowers `first`.
        for b in rs.l7_index.collect(req, []):
            for rid in b.pure:
                r = rules[rid]
                g = r.group
                if first.get(g, _INF) < rid or (g == "allow" and "deny" in first):
                    continue
                if r.full(conn, req):
                    if not copied:
                        first = dict(first)
                        copied = True
                    first[g] = rid
            if reachable:
                for rid in b.mixed:
                    if rid not in reachable:
                        continue
                    r = rules[rid]
                    g = r.group
                    if first.get(g, _INF) < rid or (g == "allow" and "deny" in first):
                        continue
                    if r.full(conn, req):
                        if not copied:
                            first = dict(first)
                            copied = True
                        first[g] = rid
        for ids in (st.always, rs.l7_scan):
            for rid in ids:
                r = rules[rid]
                g = r.group
                if first.get(g, _INF) < rid or (g == "allow" and "deny" in first):
                    continue
                if r.full(conn, req):
                    if not copied:
                        first = dict(first)
                        copied = True
                    first[g] = rid
        return self._decision(rs, first) if copied else st.decision

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
        deny = get("deny")
        key = (rs is self.tcp, deny, None if deny is not None else get("allow"), get("audit"), get("shadow_deny"),
               get("shadow_allow"))
        d = self._decisions.get(key)
        if d is None:
            d = self._build(rs, first)
            if len(self._decisions) >= DECISIONS_MAX:
                self._decisions.clear()
            self._decisions[key] = d
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
