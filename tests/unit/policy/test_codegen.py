"""Generated rule evaluators: every shape edge (empty conjunction, empty clause, L4-only, L7-only)."""

from __future__ import annotations

import itertools

import pytest

from secmesh.policy.codegen import evaluators

T, F = (lambda a: True), (lambda a: False)


def reference_full(w4, w7, clauses, c=None, q=None) -> bool:
    return (all(f(c) for f in w4) and all(f(q) for f in w7)
            and all(any(all(f(c) for f in f4) and all(f(q) for f in f7) for f4, f7 in cl) for cl in clauses))


def reference_l4(w4, w7, clauses, c=None) -> int:
    if not all(f(c) for f in w4):
        return 0
    res = 2 if w7 else 1
    for cl in clauses:
        got = 0                        # TRUE (1) beats RESIDUAL (2) beats FALSE (0)
        for f4, f7 in cl:
            if all(f(c) for f in f4):
                got = 1 if (not f7 or got == 1) else 2
        if got == 0:
            return 0
        if got == 2:
            res = 2
    return res


CONJ = [((), ()), ((T,), ()), ((F,), ()), ((), (T,)), ((), (F,)), ((T,), (F,)), ((F,), (T,)), ((T, T), (T,))]
CLAUSES = [()] + [tuple(c) for n in (1, 2) for c in itertools.permutations(CONJ, n)]


@pytest.mark.parametrize("w4,w7", [((), ()), ((T,), ()), ((F,), ()), ((), (T,)), ((), (F,)), ((T,), (T,))])
def test_generated_evaluators_match_the_nested_definition(w4, w7) -> None:
    for clauses in itertools.chain(((),), ((c,) for c in CLAUSES), itertools.product(CLAUSES[:6], CLAUSES[:6])):
        full, l4 = evaluators(w4, w7, clauses)
        assert full(None, None) == reference_full(w4, w7, clauses), clauses
        assert l4(None) == reference_l4(w4, w7, clauses), clauses
