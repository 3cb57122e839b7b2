"""AuthorizationPolicies → rules compiled for one workload and one protocol, indexed.

Scoping first (root namespace = mesh-wide, else the workload's namespace; `selector`
labels; `targetRefs` policies attach to gateways/services, never to a sidecar workload).
Then each rule becomes: a list of `when` predicates, an OR of `from` conjunctions and an
OR of `to` conjunctions, each predicate tagged L4 (connection) or L7 (request).

For `protocol: tcp` Istio's builder rules apply exactly: an ALLOW rule with any HTTP-only
field is skipped entirely (a smaller allow), a DENY/AUDIT rule just loses those fields (a
wider deny). Dry-run policies go to shadow groups that are evaluated but never enforced.
Rule ids follow Envoy's policy-name order (`ns[..]-policy[..]-rule[i]`, lexicographic),
so "the first matching id" is the effective policy Envoy would report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from secmesh.policy import matchers as m
from secmesh.policy.codegen import evaluators
from secmesh.policy.decision import RuleRef
from secmesh.policy.index import EXACT_KINDS, L4_KINDS, L7_KINDS, WEIGHT, Index
from secmesh.policy.model import Action, AuthorizationPolicy, PolicySet, Rule, Workload, applies_to
from secmesh.policy.preds import PredCache, UnsupportedPolicy, condition_preds, operation_preds, source_preds, use_cache

GROUPS = ("deny", "allow", "audit", "shadow_deny", "shadow_allow")
FALSE, TRUE, RESIDUAL = 0, 1, 2
__all__ = ["UnsupportedPolicy", "RuleSet", "compile_rules", "applicable", "TRUE", "FALSE", "RESIDUAL"]


@dataclass(slots=True)
class CompiledRule:
    id: int
    group: str
    ref: RuleRef
    whens: tuple[m.Pred, ...]
    froms: tuple[tuple[m.Pred, ...], ...] | None
    tos: tuple[tuple[m.Pred, ...], ...] | None
    full: Callable[[Any, Any], bool] = field(repr=False, default=None)  # type: ignore[assignment]
    l4: Callable[[Any], int] = field(repr=False, default=None)  # type: ignore[assignment]
    has_l4: bool = False
    has_l7: bool = False
    implied: int = FALSE     # L4 result implied by an L4 index hit (FALSE: evaluate l4())
    l7_anchored: bool = False


def _split(preds: tuple[m.Pred, ...]) -> tuple[tuple[Callable[[Any], bool], ...], tuple[Callable[[Any], bool], ...]]:
    return tuple(p.fn for p in preds if not p.l7), tuple(p.fn for p in preds if p.l7)


def _evaluators(rule: CompiledRule) -> None:
    """Attach the two evaluators the engine calls: full(c, q) and l4(c) → FALSE/TRUE/RESIDUAL (generated
    straight-line code per rule shape, see `codegen.py`)."""
    w4, w7 = _split(rule.whens)
    clauses = tuple(tuple(_split(conj) for conj in clause) for clause in (rule.froms, rule.tos) if clause is not None)
    has_l7 = bool(w7) or any(f7 for clause in clauses for _, f7 in clause)

    full, l4 = evaluators(w4, w7, clauses)  # straight-line code per rule shape
    rule.full, rule.l4 = full, l4
    rule.has_l7 = has_l7
    rule.has_l4 = bool(w4) or any(f4 for clause in clauses for f4, _ in clause)


# --- rules and anchors ---------------------------------------------------------------------

Option = tuple[int, tuple[tuple[str, Any], ...], bool]  # (score, anchor keys, index hit implies the L4 part)


def _best(preds: tuple[m.Pred, ...], allowed: frozenset[str]) -> tuple[int, m.Pred] | None:
    best = None
    for p in preds:
        if p.anchors is None or any(k not in allowed for k, _ in p.anchors):
            continue
        score = max(WEIGHT[k] for k, _ in p.anchors)
        if best is None or score < best[0]:
            best = (score, p)
    return best


def _l4_count(preds: Any) -> int:
    return sum(1 for p in preds if not p.l7)


def anchor_options(rule: CompiledRule, allowed: frozenset[str]) -> list[Option]:
    """Every set of keys of which at least one must hit for the rule to match.

    `implied` is set when the anchor predicate is the rule's only L4 condition on its path
    and the index is exact for it, so a hit decides the whole L4 part without evaluating it.
    """
    l4_when = _l4_count(rule.whens)
    l4_in = [sum(_l4_count(c) for c in clause) if clause else 0 for clause in (rule.froms, rule.tos)]
    options: list[Option] = []
    for p in rule.whens:
        b = _best((p,), allowed)
        if b:
            exact = all(k in EXACT_KINDS for k, _ in p.anchors or ())
            options.append((b[0], p.anchors or (), exact and l4_when == 1 and not any(l4_in)))
    for n, clause in enumerate((rule.froms, rule.tos)):
        if not clause:
            continue
        parts = [_best(conj, allowed) for conj in clause]
        if all(parts):
            keys = tuple(k for _, p in parts for k in (p.anchors or ()))  # type: ignore[misc]
            exact = all(k in EXACT_KINDS for k, _ in keys) and all(_l4_count(c) == 1 for c in clause)
            options.append((max(b[0] for b in parts), keys,  # type: ignore[index]
                            exact and l4_when == 0 and l4_in[1 - n] == 0))
    return options


def _choose(options: list[Option], freq: dict[Any, int]) -> Option | None:
    """The option expected to yield the fewest candidates (sum of its buckets' sizes)."""
    if not options:
        return None
    return min(options, key=lambda o: (sum(freq[k] for k in set(o[1])) + o[0] / 10, not o[2]))


def _count(freq: dict[Any, int], options: list[Option]) -> None:
    for key in {k for o in options for k in o[1]}:
        freq[key] = freq.get(key, 0) + 1


def _group(ap: AuthorizationPolicy) -> str | None:
    if ap.action is Action.AUDIT:
        return None if ap.dry_run else "audit"  # dry-run applies to ALLOW and DENY only
    name = ap.action.value.lower()
    return ("shadow_" + name) if ap.dry_run else name


def rule_preds(ap: AuthorizationPolicy, rule: Rule) -> tuple[list[m.Pred], list[tuple[m.Pred, ...]] | None,
                                                               list[tuple[m.Pred, ...]] | None]:
    ns = ap.meta.namespace
    whens: list[m.Pred] = []
    for c in rule.when:
        whens += condition_preds(c, ns)
    froms = None if rule.from_ is None else [source_preds(s, ns) for s in rule.from_]
    tos = None if rule.to is None else [operation_preds(o) for o in rule.to]
    return whens, froms, tos


def compile_rule(ap: AuthorizationPolicy, index: int, rule: Rule, preds: Any, tcp: bool) -> CompiledRule | None:
    whens, froms, tos = preds
    if tcp:
        every = whens + [p for conj in (froms or []) + (tos or []) for p in conj]
        if any(p.l7 for p in every):
            if ap.action is Action.ALLOW:
                return None  # Istio skips the whole ALLOW rule on TCP: a smaller allow
            whens = [p for p in whens if not p.l7]  # DENY/AUDIT: drop the HTTP-only fields, a wider deny
            froms = None if froms is None else [tuple(p for p in conj if not p.l7) for conj in froms]
            tos = None if tos is None else [tuple(p for p in conj if not p.l7) for conj in tos]
    ref = RuleRef("AuthorizationPolicy", ap.meta.namespace, ap.meta.name, index, ap.action.value, rule.pos)
    cr = CompiledRule(id=-1, group=_group(ap) or "", ref=ref, whens=tuple(whens),
                      froms=None if froms is None else tuple(froms), tos=None if tos is None else tuple(tos))
    _evaluators(cr)
    return cr


def applicable(policies: PolicySet, workload: Workload, root_namespace: str) -> list[AuthorizationPolicy]:
    """The AuthorizationPolicies that bind to this sidecar workload; CUSTOM ones are refused."""
    out = []
    for ap in policies.authorization:
        if ap.target_refs:
            continue  # attaches to gateways / services (waypoints), not to a sidecar workload
        if not applies_to(ap.meta.namespace, ap.selector, workload, root_namespace):
            continue
        if ap.action is Action.CUSTOM:
            raise UnsupportedPolicy(
                f"AuthorizationPolicy {ap.meta.ref} uses action CUSTOM (provider {ap.provider!r}), which secmesh "
                "does not support; refusing to enforce a partial policy", location=str(ap.meta.pos), field="spec.action")
        out.append(ap)
    return out


@dataclass(slots=True)
class RuleSet:
    """All compiled rules of one protocol, with their indexes and per-group bookkeeping."""

    rules: list[CompiledRule]
    l4_index: Index
    l4_scan: frozenset[int]        # rules with L4 predicates but no L4 anchor: checked per connection
    l7_index: Index                # every rule with L7 predicates and an L7 anchor
    l7_scan: tuple[int, ...]       # pure-L7 rules without an L7 anchor: checked per request
    pure_l7: frozenset[int]        # rules with only L7 predicates (undecided at connection time)
    always_min: dict[str, int]     # per group: lowest id of a rule with no predicates at all
    pure_l7_min: dict[str, int]    # per group: lowest pure-L7 rule id
    has_allow: bool
    has_shadow: dict[str, bool]
    skipped: list[RuleRef] = field(default_factory=list)  # ALLOW rules skipped on TCP
    # Engine memos (bounded, rebuilt on demand): L4 index hits → connection state, and
    # (connection state, L7 index hits) → the rules left to evaluate for a request.
    memo: dict[Any, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()   # group of each rule id (ids of one group are contiguous)


def _ruleset(compiled: list[CompiledRule], aps: list[AuthorizationPolicy], skipped: list[RuleRef]) -> RuleSet:
    compiled.sort(key=lambda r: (GROUPS.index(r.group), r.ref.envoy_id))
    opts4 = [anchor_options(r, L4_KINDS) if r.has_l4 else [] for r in compiled]
    opts7 = [anchor_options(r, L7_KINDS) if r.has_l7 else [] for r in compiled]
    freq: dict[Any, int] = {}
    for o4, o7 in zip(opts4, opts7):
        _count(freq, o4)
        _count(freq, o7)
    l4, l7 = Index(), Index()
    l4_scan: set[int] = set()
    l7_scan: list[int] = []
    pure: set[int] = set()
    always_min: dict[str, int] = {}
    pure_min: dict[str, int] = {}
    for i, r in enumerate(compiled):
        r.id = i
        if r.has_l7:
            opt7 = _choose(opts7[i], freq)
            if opt7:
                l7.add(i, opt7[1])
                r.l7_anchored = True
        if r.has_l4:
            opt = _choose(opts4[i], freq)
            if opt:
                if opt[2]:
                    r.implied = RESIDUAL if r.has_l7 else TRUE
                l4.add(i, opt[1])
            else:
                l4_scan.add(i)
        elif r.has_l7:
            pure.add(i)
            pure_min.setdefault(r.group, i)
            if not r.l7_anchored:
                l7_scan.append(i)
        else:
            always_min.setdefault(r.group, i)
    dry = {"shadow_deny": False, "shadow_allow": False}
    for ap in aps:
        if ap.dry_run and ap.action in (Action.ALLOW, Action.DENY):
            dry["shadow_" + ap.action.value.lower()] = True
    return RuleSet(compiled, l4.freeze(compiled), frozenset(l4_scan), l7.freeze(compiled), tuple(l7_scan),
                   frozenset(pure), always_min, pure_min, any(ap.action is Action.ALLOW and not ap.dry_run for ap in aps),
                   dry, skipped, groups=tuple(r.group for r in compiled))


def compile_rules(aps: list[AuthorizationPolicy]) -> tuple[RuleSet, RuleSet]:
    """(http, tcp) rule sets; each rule's predicates are built once and shared by both."""
    http: list[CompiledRule] = []
    tcp: list[CompiledRule] = []
    skipped: list[RuleRef] = []
    use_cache(PredCache())
    try:
        for ap in aps:
            if _group(ap) is None:
                continue
            for i, rule in enumerate(ap.rules or ()):
                preds = rule_preds(ap, rule)
                http.append(compile_rule(ap, i, rule, preds, tcp=False))  # type: ignore[arg-type]
                cr = compile_rule(ap, i, rule, preds, tcp=True)
                if cr is None:
                    skipped.append(RuleRef("AuthorizationPolicy", ap.meta.namespace, ap.meta.name, i, "ALLOW",
                                           rule.pos))
                else:
                    tcp.append(cr)
    finally:
        use_cache(None)
    return _ruleset(http, aps, []), _ruleset(tcp, aps, skipped)
