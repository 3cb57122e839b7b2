"""Lookup tables that turn "which rules could match?" into a few dict probes.

Each compiled rule registers *anchor keys* that are necessary for it to match (its
principal is X, or its path starts with Y, or its source IP is in Z). A lookup returns the
union of rules whose anchors hit — a small superset of the matching rules — and only those
are evaluated. Exact values are dict keys; prefixes and suffixes live in dicts keyed by the
affix and probed once per distinct affix length; CIDRs live in dicts keyed by the masked
network, probed once per distinct (version, prefix length).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

# kind -> how to read the looked-up value(s) from ConnAttrs (L4) or RequestAttrs (L7)
_SINGLE: dict[str, Callable[[Any], Any]] = {
    "principal": lambda c: c.principal,
    "td": lambda c: c.trust_domain,
    "port": lambda c: c.dest_port,
    "sni": lambda c: c.sni,
    "path": lambda q: q.path,
    "method": lambda q: q.method,
    "host": lambda q: q.host,
    "req_principal": lambda q: (q.claims.get("iss"), q.claims.get("sub")) if q.claims else None,
}
_MULTI: dict[str, Callable[[Any], Iterable[Any]]] = {
    "ns": lambda c: c.ns_candidates,
    "sa": lambda c: c.sa_candidates,
}
_IP: dict[str, Callable[[Any], Any]] = {
    "src_ip": lambda c: c.source_ip,
    "remote_ip": lambda c: c.remote_ip,
    "dest_ip": lambda c: c.dest_ip,
}
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
    `evaluate` the rules whose L4 part still has to be evaluated.
    """

    __slots__ = ("ids", "true_min", "res", "res_min", "evaluate")

    def __init__(self, ids: list[int], rules: Any) -> None:
        self.ids = tuple(ids)
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
        self.evaluate = tuple(evaluate)


class _Table:
    def collect(self, attrs: Any, out: list[Any]) -> None:
        raise NotImplementedError


class _Exact(_Table):
    __slots__ = ("get", "table")

    def __init__(self, get: Callable[[Any], Any]) -> None:
        self.get = get
        self.table: dict[Any, list[int]] = defaultdict(list)

    def collect(self, attrs: Any, out: list[Any]) -> None:
        hit = self.table.get(self.get(attrs))
        if hit:
            out.append(hit)


class _Multi(_Exact):
    def collect(self, attrs: Any, out: list[Any]) -> None:
        table = self.table
        for v in self.get(attrs):
            hit = table.get(v)
            if hit:
                out.append(hit)


class _Header(_Table):
    __slots__ = ("table", "names")

    def __init__(self) -> None:
        self.table: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.names: tuple[str, ...] = ()

    def collect(self, q: Any, out: list[Any]) -> None:
        headers = q.headers
        for name in self.names:
            v = headers.get(name)
            if v is not None:
                hit = self.table.get((name, v))
                if hit:
                    out.append(hit)


class _Affix(_Table):
    """Prefixes (or suffixes): one dict probe per distinct affix length."""

    __slots__ = ("get", "table", "lengths", "suffix")

    def __init__(self, get: Callable[[Any], Any], suffix: bool) -> None:
        self.get = get
        self.suffix = suffix
        self.table: dict[str, list[int]] = defaultdict(list)
        self.lengths: tuple[int, ...] = ()

    def collect(self, attrs: Any, out: list[Any]) -> None:
        s = self.get(attrs)
        if not s:
            return
        n = len(s)
        table = self.table
        for length in self.lengths:
            if length > n:
                break
            hit = table.get(s[n - length:] if self.suffix else s[:length])
            if hit:
                out.append(hit)


class _Cidr(_Table):
    __slots__ = ("get", "table", "shapes")

    def __init__(self, get: Callable[[Any], Any]) -> None:
        self.get = get
        self.table: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        self.shapes: tuple[tuple[int, int, int], ...] = ()  # (version, plen, shift)

    def collect(self, attrs: Any, out: list[Any]) -> None:
        ip = self.get(attrs)
        if ip is None:
            return
        version, value = ip
        table = self.table
        for v, plen, shift in self.shapes:
            if v == version:
                hit = table.get((v, plen, value >> shift))
                if hit:
                    out.append(hit)


def _new_table(kind: str) -> _Table:
    base, _, affix = kind.rpartition("_") if kind.endswith(("_prefix", "_suffix")) else (kind, "", "")
    if affix:
        return _Affix(_SINGLE[base] if base in _SINGLE else (lambda c: c.principal), suffix=affix == "suffix")
    if kind in _SINGLE:
        return _Exact(_SINGLE[kind])
    if kind in _MULTI:
        return _Multi(_MULTI[kind])
    if kind in _IP:
        return _Cidr(_IP[kind])
    if kind == "header":
        return _Header()
    raise KeyError(kind)


class Index:
    """Anchor key → rule ids, for one attribute phase (L4 or L7)."""

    def __init__(self) -> None:
        self._tables: dict[str, _Table] = {}
        self.tables: tuple[_Table, ...] = ()

    def add(self, rule_id: int, anchors: Iterable[tuple[str, Any]]) -> None:
        for kind, key in anchors:
            table = self._tables.get(kind)
            if table is None:
                table = self._tables[kind] = _new_table(kind)
            bucket = table.table[key]  # type: ignore[attr-defined]
            if not bucket or bucket[-1] != rule_id:
                bucket.append(rule_id)

    def freeze(self, rules: Any) -> Index:
        for kind, table in self._tables.items():
            table.table = {k: Bucket(v, rules) for k, v in table.table.items()}  # type: ignore[attr-defined]
            if isinstance(table, _Affix):
                table.lengths = tuple(sorted({len(k) for k in table.table}))
            elif isinstance(table, _Cidr):
                shapes = {(v, plen, (32 if v == 4 else 128) - plen) for v, plen, _ in table.table}
                table.shapes = tuple(sorted(shapes))
            elif isinstance(table, _Header):
                table.names = tuple(sorted({name for name, _ in table.table}))
        self.tables = tuple(self._tables.values())
        return self

    def buckets(self, attrs: Any) -> list[Bucket]:
        out: list[Bucket] = []
        for table in self.tables:
            table.collect(attrs, out)
        return out

    def lookup(self, attrs: Any) -> set[int]:
        ids: set[int] = set()
        for b in self.buckets(attrs):
            ids.update(b.ids)
        return ids

    def kinds(self) -> list[str]:
        return sorted(self._tables)
