"""Lookup tables that turn "which rules could match?" into a few dict probes.

Each compiled rule registers *anchor keys* that are necessary for it to match (its
principal is X, or its path starts with Y, or its source IP is in Z). A lookup returns the
buckets of rules whose anchors hit — a small superset of the matching rules — and only
those are evaluated. Exact values are dict keys; prefixes and suffixes live in dicts keyed
by the affix and probed once per distinct affix length; CIDRs live in one dict per
(version, prefix length), keyed by the masked address.

`freeze` generates one straight-line Python function per index (`collect(attrs, out)`):
no per-table method call, no getter lambda, the CIDR shapes unrolled. The lookup runs for
every connection and every request, so this is where the interpreter's per-call overhead
was going (a quarter of an L4 decision before). The generated code only reads attributes
and probes dicts built here; it has no inputs from policy text (keys are bound as constants
in the function's namespace, never spliced into the source).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

# kind -> the attribute of ConnAttrs (L4) or RequestAttrs (L7) it reads
_ATTR: dict[str, str] = {"principal": "principal", "td": "trust_domain", "port": "dest_port", "sni": "sni",
                         "path": "path", "method": "method", "host": "host"}
_MULTI: dict[str, str] = {"ns": "ns_candidates", "sa": "sa_candidates"}
_IP: dict[str, str] = {"src_ip": "source_ip", "remote_ip": "remote_ip", "dest_ip": "dest_ip"}
L4_KINDS = frozenset({"principal", "principal_prefix", "principal_suffix", "ns", "sa", "td", "td_prefix",
                      "td_suffix", "port", "sni", "sni_prefix", "sni_suffix", "src_ip", "remote_ip", "dest_ip"})
L7_KINDS = frozenset({"path", "path_prefix", "path_suffix", "method", "host", "host_prefix", "host_suffix", "header",
                      "req_principal"})
# kinds whose index hit is exactly the predicate (no superset): a hit decides that predicate
EXACT_KINDS = frozenset({"principal", "principal_prefix", "ns", "td", "td_prefix", "td_suffix", "port", "sni",
                         "sni_prefix", "sni_suffix", "src_ip", "remote_ip", "dest_ip"})
# lower is more selective; the compiler anchors each rule on its most selective option
WEIGHT = {"principal": 1, "sa": 1, "req_principal": 1, "path": 2, "header": 3, "host": 3, "ns": 3, "sni": 3,
          "principal_prefix": 4, "path_prefix": 4, "host_prefix": 5, "host_suffix": 5, "path_suffix": 5,
          "principal_suffix": 5, "sni_prefix": 5, "sni_suffix": 5, "td": 6, "td_prefix": 7, "td_suffix": 7,
          "src_ip": 4, "remote_ip": 4, "dest_ip": 6, "port": 8, "method": 9}


class Bucket:
    """The rules behind one anchor key, pre-digested for the L4 phase.

    `true_min`/`res_min` are (group, lowest id) pairs for rules whose L4 part an index hit
    decides (TRUE, or RESIDUAL: depends on the request); `res` lists the RESIDUAL ones and
    `evaluate` the rules whose L4 part still has to be evaluated; `pure`/`mixed` split the
    ids for the L7 phase (request-only rules vs rules with a connection part). Buckets hash by identity,
    so a tuple of the buckets a lookup returned is a cheap memo key for the engine.
    """

    __slots__ = ("ids", "true_min", "res", "res_min", "evaluate", "pure", "mixed", "res_l7", "res_any")

    def __init__(self, ids: list[int], rules: Any) -> None:
        self.ids = tuple(ids)
        # L7 phase: rules with only request predicates are always candidates on a hit; the
        # others only when the connection left them pending
        self.pure = tuple(i for i in ids if not rules[i].has_l4)
        self.mixed = tuple(i for i in ids if rules[i].has_l4)
        true_min: dict[str, int] = {}
        res_min: dict[str, int] = {}
        res, evaluate = [], []
        for i in ids:
            r = rules[i]
            if r.implied == 1:
                true_min.setdefault(r.group, i)
            elif r.implied == 2:
                res.append(i)
                res_min.setdefault(r.group, i)
            else:
                evaluate.append(i)
        self.true_min = tuple(true_min.items())
        self.res_min = tuple(res_min.items())
        self.res = tuple(res)
        self.res_l7 = tuple(i for i in res if rules[i].l7_anchored)       # found again through the L7 index
        self.res_any = tuple(i for i in res if not rules[i].l7_anchored)  # checked on every request
        self.evaluate = tuple(evaluate)


def _kind_parts(kind: str) -> tuple[str, str]:
    """`path_prefix` → ("path", "prefix"); `principal` → ("principal", "")."""
    if kind.endswith(("_prefix", "_suffix")):
        base, _, affix = kind.rpartition("_")
        return base, affix
    return kind, ""


class _Gen:
    """Accumulates the generated lookup's source and the constants it closes over."""

    def __init__(self) -> None:
        self.lines = ["def collect(a, out):", "    append = out.append"]
        self.env: dict[str, Any] = {}

    def const(self, value: Any) -> str:
        name = f"K{len(self.env)}"
        self.env[name] = value
        return name

    def emit(self, *lines: str) -> None:
        self.lines.extend("    " + ln for ln in lines)

    def build(self) -> Callable[[Any, list[Any]], list[Any]]:
        self.emit("return out")
        code = compile("\n".join(self.lines) + "\n", "<secmesh.policy.index>", "exec")
        exec(code, self.env)  # noqa: S102 — source built above from fixed templates and attribute names
        return self.env["collect"]  # type: ignore[no-any-return]


def _gen_exact(g: _Gen, kind: str, table: dict[Any, Bucket]) -> None:
    t = g.const(table)
    if kind == "req_principal":   # (iss, sub) of the verified JWT; only string claims can be keys
        g.emit("cl = a.claims", "if cl:", "    iss = cl.get('iss'); sub = cl.get('sub')",
               "    if iss.__class__ is str and sub.__class__ is str:",
               f"        h = {t}.get((iss, sub))", "        if h is not None: append(h)")
    elif kind in _MULTI:
        g.emit(f"for v in a.{_MULTI[kind]}:", f"    h = {t}.get(v)", "    if h is not None: append(h)")
    else:
        g.emit(f"h = {t}.get(a.{_ATTR[kind]})", "if h is not None: append(h)")


def _gen_affix(g: _Gen, base: str, suffix: bool, table: dict[str, Bucket]) -> None:
    lengths = g.const(tuple(sorted({len(k) for k in table})))
    t = g.const(table)
    probe = "s[n - ln:]" if suffix else "s[:ln]"
    g.emit(f"s = a.{_ATTR[base]}", "if s:", "    n = len(s)", f"    for ln in {lengths}:",
           "        if ln > n: break", f"        h = {t}.get({probe})", "        if h is not None: append(h)")


def _gen_cidr(g: _Gen, kind: str, table: dict[tuple[int, int, int], Bucket]) -> None:
    shapes: dict[tuple[int, int], dict[int, Bucket]] = defaultdict(dict)
    for (version, plen, key), bucket in table.items():
        shapes[(version, plen)][key] = bucket
    g.emit(f"ip = a.{_IP[kind]}", "if ip is not None:", "    ver, val = ip")
    for (version, plen), keyed in sorted(shapes.items()):
        shift = (32 if version == 4 else 128) - plen
        t = g.const(keyed)
        g.emit(f"    if ver == {version}:", f"        h = {t}.get(val >> {shift})", "        if h is not None: append(h)")


def _gen_header(g: _Gen, table: dict[tuple[str, str], Bucket]) -> None:
    by_name: dict[str, dict[str, Bucket]] = defaultdict(dict)
    for (name, value), bucket in table.items():
        by_name[name][value] = bucket
    g.emit("hd = a.headers")
    for name, values in sorted(by_name.items()):
        t, n = g.const(values), g.const(name)
        g.emit(f"v = hd.get({n})", "if v is not None:", f"    h = {t}.get(v)", "    if h is not None: append(h)")


class Index:
    """Anchor key → rule ids, for one attribute phase (L4 or L7)."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[Any, Any]] = {}
        self.tables: tuple[str, ...] = ()
        self.collect: Callable[[Any, list[Any]], list[Any]] = lambda a, out: out

    def add(self, rule_id: int, anchors: Iterable[tuple[str, Any]]) -> None:
        for kind, key in anchors:
            table = self._tables.get(kind)
            if table is None:
                if kind not in L4_KINDS and kind not in L7_KINDS:
                    raise KeyError(kind)
                table = self._tables[kind] = defaultdict(list)
            bucket = table[key]
            if not bucket or bucket[-1] != rule_id:
                bucket.append(rule_id)

    def freeze(self, rules: Any) -> Index:
        g = _Gen()
        for kind in sorted(self._tables):
            table = self._tables[kind] = {k: Bucket(v, rules) for k, v in self._tables[kind].items()}
            base, affix = _kind_parts(kind)
            if affix:
                _gen_affix(g, base, affix == "suffix", table)
            elif kind in _IP:
                _gen_cidr(g, kind, table)
            elif kind == "header":
                _gen_header(g, table)
            else:
                _gen_exact(g, kind, table)
        self.tables = tuple(sorted(self._tables))
        if self._tables:
            self.collect = g.build()
        return self

    def buckets(self, attrs: Any) -> list[Bucket]:
        return self.collect(attrs, [])

    def lookup(self, attrs: Any) -> set[int]:
        ids: set[int] = set()
        for b in self.buckets(attrs):
            ids.update(b.ids)
        return ids

    def kinds(self) -> list[str]:
        return sorted(self._tables)
