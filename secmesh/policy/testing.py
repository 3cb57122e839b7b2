"""`policy test`: run every case of the test files through the engine, and measure coverage.

Each case is decided exactly like `policy check` decides a request (same engine, same
request schema), with one compiled engine per (policy set, workload) shared by all cases
that target it. Coverage answers the reviewer's question "which rules did no test ever
exercise?": a rule is covered when some case's request matches it, whether or not it was
the rule that decided (a DENY rule matched alongside an ALLOW rule is still tested); rules
of policies that no case's workload is in scope of are reported separately.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from secmesh.errors import PolicyError
from secmesh.policy.compile import TRUE
from secmesh.policy.decision import Decision
from secmesh.policy.engine import Engine
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, AuthorizationPolicy, MtlsMode, PolicySet, Pos, applies_to
from secmesh.policy.testfile import TestCase, TestFile

RuleKey = tuple[str, str, int]  # (namespace, name, rule index)


@dataclass(slots=True)
class CaseResult:
    case: TestCase
    status: str              # pass | fail | error
    actual: str | None = None
    decided_by: str | None = None
    message: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Uncovered:
    policy: str    # namespace/name
    rule: int
    action: str
    pos: Pos
    why: str       # "no case matched it" | "no case targets a workload in its scope"


@dataclass(slots=True)
class Coverage:
    total: int = 0
    covered: int = 0
    uncovered: list[Uncovered] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.covered / self.total if self.total else 100.0


@dataclass(slots=True)
class TestRun:
    __test__ = False

    results: list[CaseResult]
    coverage: Coverage | None = None

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.status == "pass")

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.status != "pass")


def _ref(d: Decision) -> str | None:
    p = d.policy
    if p is None:
        return None
    return f"{p.namespace}/{p.name}" + (f"[{p.rule}]" if p.rule is not None else "")


def _expect_policy(case: TestCase, d: Decision) -> str | None:
    """None when the deciding policy is what the case expects, else the complaint."""
    p = d.policy
    if case.policy is not None:
        want = case.policy
        if want.lower() == "none":
            if p is not None:
                return f"expected no deciding policy, got {_ref(d)}"
        elif p is None:
            return f"expected policy {want}, but no policy decided ({d.reason.value})"
        elif (want != f"{p.namespace}/{p.name}") and (("/" in want) or want != p.name):
            return f"expected policy {want}, got {_ref(d)}"
    if case.rule is not None and (p is None or p.rule != case.rule):
        return f"expected rule {case.rule}, got {_ref(d) or 'none'}"
    if case.reason is not None and d.reason.value != case.reason:
        return f"expected reason {case.reason}, got {d.reason.value}"
    return None


class _Tracker:
    """Which rules of which policy set were matched, and which were in scope of some case."""

    def __init__(self) -> None:
        self.matched: dict[int, set[RuleKey]] = {}
        self.scoped: dict[int, set[tuple[str, str]]] = {}
        self._engines: set[int] = set()

    def record(self, ps: PolicySet, engine: Engine, case: TestCase, candidates: PolicySet) -> None:
        """`candidates`: the subset of `ps` that can concern the case's namespace."""
        key = id(ps)
        matched = self.matched.setdefault(key, set())
        scoped = self.scoped.setdefault(key, set())
        if id(engine) not in self._engines:
            self._engines.add(id(engine))
            for ap in candidates.authorization:
                if applies_to(ap.meta.namespace, ap.selector, engine.workload, engine.root_namespace):
                    scoped.add((ap.meta.namespace, ap.meta.name))
        conn = case.check.conn
        mode, _ = engine.peer.resolve(conn.dest_port)
        if mode is MtlsMode.STRICT and conn.principal is None:
            return  # refused before authorization: no rule sees this request
        if mode is MtlsMode.DISABLE and conn.principal is not None:
            conn = conn.without_principal()
        if case.check.protocol == "tcp":
            for r in engine.tcp.rules:
                if r.l4(conn) == TRUE:
                    matched.add((r.ref.namespace, r.ref.name, r.ref.rule))  # type: ignore[arg-type]
        else:
            for r in engine.http.rules:
                if r.full(conn, case.check.request):
                    matched.add((r.ref.namespace, r.ref.name, r.ref.rule))  # type: ignore[arg-type]

    def coverage(self, sets: Iterable[PolicySet]) -> Coverage:
        cov = Coverage()
        seen: set[tuple[str, str, int, str]] = set()
        for ps in sets:
            matched = self.matched.get(id(ps), set())
            scoped = self.scoped.get(id(ps), set())
            for ap in ps.authorization:
                for i, rule in enumerate(ap.rules or ()):
                    ident = (ap.meta.namespace, ap.meta.name, i, str(rule.pos))
                    if ident in seen:
                        continue
                    seen.add(ident)
                    cov.total += 1
                    if (ap.meta.namespace, ap.meta.name, i) in matched:
                        cov.covered += 1
                        continue
                    why = ("no case matched it" if (ap.meta.namespace, ap.meta.name) in scoped
                           else "no case targets a workload in its scope")
                    cov.uncovered.append(Uncovered(ap.meta.ref, i, _action(ap), rule.pos, why))
        cov.uncovered.sort(key=lambda u: (u.pos.file, u.pos.line, u.pos.col))
        return cov


def namespace_subset(ps: PolicySet, namespace: str, root_namespace: str) -> PolicySet:
    """Only the policies that can concern a workload of `namespace` (its own and the root's):
    the same engine, compiled without scanning thousands of unrelated policies."""
    keep = (namespace, root_namespace)
    return PolicySet(tuple(p for p in ps.authorization if p.meta.namespace in keep),
                     tuple(p for p in ps.peer_authentication if p.meta.namespace in keep),
                     tuple(p for p in ps.request_authentication if p.meta.namespace in keep))


def _action(ap: AuthorizationPolicy) -> str:
    return ap.action.value + (" (dry-run)" if ap.dry_run else "")


def run_tests(files: Iterable[TestFile], default_policies: PolicySet,
              load: Callable[[tuple], PolicySet], *, root_namespace: str = ROOT_NAMESPACE_DEFAULT,
              coverage: bool = False) -> TestRun:
    """Decide every case; `load(paths)` supplies the policy set of files that name their own."""
    engines: dict[tuple, Engine] = {}
    sets: dict[tuple, PolicySet] = {}
    tracker = _Tracker() if coverage else None
    results: list[CaseResult] = []
    used: list[PolicySet] = []
    scoped: dict[tuple[int, str], PolicySet] = {}
    subsets: dict[tuple, PolicySet] = {}
    for tf in files:
        if tf.policies is None:
            ps = default_policies
        else:
            ps = sets.get(tf.policies) or sets.setdefault(tf.policies, load(tf.policies))
        if all(ps is not u for u in used):
            used.append(ps)
        for case in tf.cases:
            start = time.perf_counter()
            wl = case.check.workload
            ekey = (id(ps), wl.namespace, tuple(sorted(wl.labels.items())))
            try:
                engine = engines.get(ekey)
                if engine is None:
                    sub = scoped.get((id(ps), wl.namespace))
                    if sub is None:
                        sub = scoped[(id(ps), wl.namespace)] = namespace_subset(ps, wl.namespace, root_namespace)
                    engine = engines[ekey] = Engine(sub, wl, root_namespace)
                    subsets[ekey] = sub
                d = engine.decide(case.check.conn, case.check.request, case.check.protocol)
            except PolicyError as exc:
                results.append(CaseResult(case, "error", message=exc.message,
                                          seconds=time.perf_counter() - start))
                continue
            if tracker is not None:
                tracker.record(ps, engine, case, subsets[ekey])
            problem = None if d.action == case.expect else f"expected {case.expect}, got {d.action}: {d.message()}"
            problem = problem or _expect_policy(case, d)
            results.append(CaseResult(case, "fail" if problem else "pass", d.action, _ref(d), problem or d.message(),
                                      time.perf_counter() - start))
    return TestRun(results, tracker.coverage(used) if tracker is not None else None)
