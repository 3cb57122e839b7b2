"""A compiled rule's two evaluators as straight-line Python, generated once per rule *shape*.

A rule is `AND(when) AND OR(from conjunctions) AND OR(to conjunctions)`, each predicate L4
(reads the connection) or L7 (reads the request). Interpreting that nesting with loops
costs more than the predicates themselves, so each distinct shape — how many predicates
sit where — gets a factory compiled from generated source, and each rule calls its
factory with its own predicate functions. Thousands of rules share a handful of shapes,
so compilation stays in the milliseconds.

    full(c, q) -> bool            the rule with every attribute known
    l4(c)      -> 0 | 1 | 2       FALSE / TRUE / RESIDUAL with only the connection known

The generated code contains nothing from policy text: only `F<n>` argument names, `c`/`q`
and fixed keywords.
"""

from __future__ import annotations

from typing import Any, Callable

Fn = Callable[[Any], bool]
Clause = tuple[tuple[tuple[Fn, ...], tuple[Fn, ...]], ...]   # conjunctions of (L4 fns, L7 fns)
Shape = tuple[int, int, tuple[tuple[tuple[int, int], ...], ...]]

_FACTORIES: dict[Shape, Callable[..., tuple[Callable[[Any, Any], bool], Callable[[Any], int]]]] = {}


def _source(shape: Shape) -> str:
    n_w4, n_w7, clauses = shape
    names = iter(f"F{i}" for i in range(10 ** 9))
    w4 = [next(names) for _ in range(n_w4)]
    w7 = [next(names) for _ in range(n_w7)]
    conj = [[([next(names) for _ in range(a)], [next(names) for _ in range(b)]) for a, b in clause]
            for clause in clauses]
    params = w4 + w7 + [f for clause in conj for f4, f7 in clause for f in f4 + f7]
    full = ["    def full(c, q):"]
    full += [f"        if not {f}(c): return False" for f in w4]
    full += [f"        if not {f}(q): return False" for f in w7]
    for clause in conj:
        alts = [" and ".join([f"{f}(c)" for f in f4] + [f"{f}(q)" for f in f7]) or "True" for f4, f7 in clause]
        full.append("        if not (" + " or ".join(f"({a})" for a in alts) + "): return False" if alts
                    else "        return False")
    full.append("        return True")
    l4 = ["    def l4(c):"]
    l4 += [f"        if not {f}(c): return 0" for f in w4]
    l4.append(f"        res = {2 if w7 else 1}")
    for clause in conj:
        sure = [" and ".join(f"{f}(c)" for f in f4) or "True" for f4, f7 in clause if not f7]
        maybe = [" and ".join(f"{f}(c)" for f in f4) or "True" for f4, f7 in clause if f7]
        if not sure and not maybe:
            l4.append("        return 0")
            continue
        first = True
        if sure:
            l4.append("        if " + " or ".join(f"({s})" for s in sure) + ": pass")
            first = False
        if maybe:
            l4.append(("        if " if first else "        elif ") + " or ".join(f"({s})" for s in maybe) + ": res = 2")
        l4.append("        else: return 0")
    l4.append("        return res")
    return "\n".join([f"def make({', '.join(params)}):"] + full + l4 + ["    return full, l4", ""])


def evaluators(w4: tuple[Fn, ...], w7: tuple[Fn, ...],
               clauses: tuple[Clause, ...]) -> tuple[Callable[[Any, Any], bool], Callable[[Any], int]]:
    shape: Shape = (len(w4), len(w7), tuple(tuple((len(f4), len(f7)) for f4, f7 in cl) for cl in clauses))
    factory = _FACTORIES.get(shape)
    if factory is None:
        env: dict[str, Any] = {}
        exec(compile(_source(shape), "<secmesh.policy.codegen>", "exec"), env)  # noqa: S102 — fixed templates
        factory = _FACTORIES[shape] = env["make"]
    fns = [*w4, *w7, *(f for cl in clauses for f4, f7 in cl for f in (*f4, *f7))]
    return factory(*fns)
