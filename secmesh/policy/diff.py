"""`policy diff`: who gains or loses access between two versions of a policy set — from the engine.

For each workload scope the policies can tell apart (namespaces and selectors of both
versions; a generic workload elsewhere when mesh-wide policies exist), the request space is
partitioned (`diffspace.py`) and *both versions' engines* decide every combination of class
representatives: connection classes once, request classes only where a connection is not
already decided. Changed combinations are merged into boxes (unions along one attribute at
a time, which stay exact) and each box becomes one readable row, with one concrete request
that really changes decision — re-checked through the `policy check` request parser.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterable

from secmesh.policy import diffspace as ds
from secmesh.policy.compile import applicable
from secmesh.policy.decision import Outcome
from secmesh.policy.engine import Engine
from secmesh.policy.inventory import Inventory
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, PolicySet, Workload

MAX_COMBOS = 400_000
OTHER_NS = "other"


@dataclass(slots=True)
class Change:
    workload: Workload
    protocol: str
    old: str
    new: str
    request: dict[str, Any]
    summary: str
    sources: str = ""
    operations: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"workload": {"namespace": self.workload.namespace, "labels": dict(self.workload.labels)},
                "request": self.request, "old": self.old, "new": self.new, "summary": self.summary}


@dataclass(slots=True)
class DiffResult:
    changes: list[Change] = field(default_factory=list)
    workloads: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def widened(self) -> bool:
        return any(c.new == "ALLOW" for c in self.changes)

    @property
    def narrowed(self) -> bool:
        return any(c.new == "DENY" for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"widened": self.widened, "narrowed": self.narrowed, "changes": [c.to_dict() for c in self.changes]}


def canon(obj: Any) -> Any:
    """A policy's content without positions or load order (what "unchanged" means)."""
    if is_dataclass(obj):
        return tuple((f.name, canon(getattr(obj, f.name))) for f in fields(obj) if f.name not in ("pos", "order"))
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return tuple(sorted((k, canon(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(canon(x) for x in obj)
    return obj


# --- workloads ----------------------------------------------------------------------------

def _compatible(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(b.get(k, v) == v for k, v in a.items())


def workloads(old: PolicySet, new: PolicySet, root: str) -> list[Workload]:
    objs = list(old.authorization) + list(new.authorization) + list(old.peer_authentication) + \
        list(new.peer_authentication)
    namespaces = sorted({o.meta.namespace for o in objs} - {root})
    root_selectors = [dict(o.selector) for o in objs if o.meta.namespace == root and o.selector]
    if any(o.meta.namespace == root for o in objs):
        other = OTHER_NS
        while other in namespaces:
            other += "-x"
        namespaces.append(other)
    out = []
    for ns in namespaces:
        sels = [dict(o.selector) for o in objs if o.meta.namespace == ns and o.selector] + root_selectors
        labels: list[dict[str, str]] = [{}]
        for s in sels:
            if s not in labels:
                labels.append(s)
        for a, b in itertools.combinations(sels, 2):
            if _compatible(a, b) and (m := {**a, **b}) not in labels:
                labels.append(m)
        out += [Workload(ns, lab) for lab in labels]
    return out


def _peer_view(engine: Engine, ports: Iterable[int]) -> tuple[Any, ...]:
    return tuple(engine.peer.mode(p).value for p in (None, *ports))


# --- evaluation ---------------------------------------------------------------------------

def _allowed(engine: Engine, conn: Any, protocol: str) -> tuple[bool | None, Any]:
    cd = engine.decide_connection(conn, protocol)
    if protocol == "tcp" or cd.outcome is not Outcome.NEEDS_REQUEST:
        return cd.decision.allowed, None  # type: ignore[union-attr]
    return None, cd.residual


Box = tuple[frozenset[int], ...]


def _merge(boxes: list[Box]) -> list[Box]:
    """Union boxes that differ along exactly one attribute, until nothing merges (exact)."""
    changed = True
    while changed:
        changed = False
        for k in range(len(boxes[0]) if boxes else 0):
            groups: dict[tuple, frozenset[int]] = {}
            for b in boxes:
                key = b[:k] + b[k + 1:]
                groups[key] = groups.get(key, frozenset()) | b[k]
            if len(groups) < len(boxes):
                changed = True
                boxes = [key[:k] + (v,) + key[k:] for key, v in groups.items()]
    return boxes


def _evaluate(old: Engine, new: Engine, dims: list[ds.Dim], protocol: str, notes: list[str]
              ) -> dict[tuple[bool, bool], list[Box]]:
    l4 = [k for k, d in enumerate(dims) if not d.l7]
    l7 = [k for k, d in enumerate(dims) if d.l7]
    full7 = tuple(frozenset(range(len(dims[k].choices))) for k in l7)
    size = 1
    for d in dims:
        size *= len(d.choices) if (protocol == "http" or not d.l7) else 1
    if size > MAX_COMBOS:
        notes.append(f"{size} request classes for workload {old.workload.namespace} {dict(old.workload.labels)} "
                     f"({protocol}); only the first {MAX_COMBOS} were compared")
    out: dict[tuple[bool, bool], list[Box]] = {}
    budget = MAX_COMBOS
    zero7 = tuple(0 for _ in l7)
    for c4 in itertools.product(*(range(len(dims[k].choices)) for k in l4)):
        combo = _combo(dims, l4, c4, l7, zero7)
        conn = ds.conn_attrs(dims, combo)
        a_old, r_old = _allowed(old, conn, protocol)
        a_new, r_new = _allowed(new, conn, protocol)
        budget -= 1
        if a_old is not None and a_new is not None:
            if a_old != a_new:
                out.setdefault((a_old, a_new), []).append(tuple(frozenset({i}) for i in c4) + full7)
            continue
        for c7 in itertools.product(*(range(len(dims[k].choices)) for k in l7)):
            budget -= 1
            if budget < 0:
                return out
            q = ds.request_attrs(dims, _combo(dims, l4, c4, l7, c7))
            o = a_old if a_old is not None else old.decide_request(r_old, q).allowed
            n = a_new if a_new is not None else new.decide_request(r_new, q).allowed
            if o != n:
                out.setdefault((o, n), []).append(tuple(frozenset({i}) for i in c4 + c7))
        if budget < 0:
            break
    return out


def _combo(dims: list[ds.Dim], l4: list[int], c4: tuple[int, ...], l7: list[int], c7: tuple[int, ...]
           ) -> tuple[int, ...]:
    combo = [0] * len(dims)
    for k, i in zip(l4, c4):
        combo[k] = i
    for k, i in zip(l7, c7):
        combo[k] = i
    return tuple(combo)


# --- rows ---------------------------------------------------------------------------------

def _describe(d: ds.Dim, chosen: frozenset[int]) -> str | None:
    if len(chosen) == len(d.choices):
        return None
    labels = list(dict.fromkeys(d.choices[i].label for i in sorted(chosen)))
    rest = [i for i in range(len(d.choices)) if i not in chosen]
    if len(labels) >= 2 and len(rest) == 1:
        return f"all but {d.choices[rest[0]].label}"
    return " or ".join(labels)


def _request(w: Workload, dims: list[ds.Dim], point: tuple[int, ...], protocol: str) -> dict[str, Any]:
    v = {d.name: d.choices[i].value for d, i in zip(dims, point)}
    src: dict[str, Any] = {}
    if v.get("principal") is not None:
        src["principal"] = v["principal"]
    if v.get("source_ip") is not None:
        src["ip"] = v["source_ip"]
    if "remote_ip" in v:
        src["remote_ip"] = v["remote_ip"]
    doc: dict[str, Any] = {"workload": {"namespace": w.namespace, "labels": dict(w.labels)}, "protocol": protocol,
                           "source": src, "destination": {"port": v["port"]}}
    if v.get("dest_ip") is not None:
        doc["destination"]["ip"] = v["dest_ip"]
    if v.get("sni") is not None:
        doc["connection"] = {"sni": v["sni"]}
    if protocol == "http":
        r: dict[str, Any] = {"method": v.get("method", "GET"), "path": v.get("path", "/")}
        if v.get("host") is not None:
            r["host"] = v["host"]
        headers = {n[len("header:"):]: x for n, x in v.items() if n.startswith("header:") and x is not None}
        if headers:
            r["headers"] = headers
        claims = ds.claims_of(v)
        if claims:
            r["auth"] = {"claims": claims}
        doc["request"] = r
    return doc


def _row(w: Workload, dims: list[ds.Dim], box: Box, protocol: str, old: bool, new: bool) -> Change:
    parts_src, parts_op = [], []
    for d, chosen in zip(dims, box):
        if protocol == "tcp" and d.l7:
            continue
        text = _describe(d, chosen)
        if text is None:
            continue
        (parts_op if d.l7 or d.name in ("port", "dest_ip", "sni") else parts_src).append(text)
    sources = ", ".join(parts_src) or "any source"
    ops = ", ".join(parts_op) or ("any connection" if protocol == "tcp" else "any request")
    verb = "gains" if new else "loses"
    where = f"{w.namespace}" + (" " + ",".join(f"{k}={x}" for k, x in sorted(w.labels.items())) if w.labels else "")
    summary = f"[{where}] {sources} {verb} access to {ops}" + (" (TCP)" if protocol == "tcp" else "")
    point = tuple(min(s) for s in box)
    return Change(w, protocol, "ALLOW" if old else "DENY", "ALLOW" if new else "DENY",
                  _request(w, dims, point, protocol), summary, sources, ops)


def diff(old: PolicySet, new: PolicySet, *, root_namespace: str = ROOT_NAMESPACE_DEFAULT,
         inventory: Inventory | None = None, protocols: str = "auto") -> DiffResult:
    """Every class of requests whose decision differs between `old` and `new`, as rows."""
    result = DiffResult()
    inventory = inventory or Inventory()
    for w in workloads(old, new, root_namespace):
        aps_old, aps_new = applicable(old, w, root_namespace), applicable(new, w, root_namespace)
        e_old, e_new = Engine(old, w, root_namespace), Engine(new, w, root_namespace)
        pa_ports = sorted({pm.port for r in (e_old.peer, e_new.peer) if r.workload for pm in r.workload.port_level})
        if canon(aps_old) == canon(aps_new) and _peer_view(e_old, pa_ports) == _peer_view(e_new, pa_ports):
            continue
        result.workloads += 1
        tcp_ports = sorted({t.port for t in inventory.tcp_ports
                            if t.workload.namespace == w.namespace and t.workload.matched_by(w.labels)})
        col = ds.Collector()
        for ap in aps_old + aps_new:
            col.policy(ap)
        dims = ds.build(col, pa_ports + tcp_ports)
        ds.signature_dedupe(dims, *ds.predicates(aps_old + aps_new))
        plan = [("http", dims)]
        if protocols in ("both", "tcp") or (protocols == "auto" and tcp_ports):
            plan.append(("tcp", dims))
        if protocols == "tcp":
            plan = plan[1:]
        for protocol, dd in plan:
            dd = _restrict_ports(dd, tcp_ports, protocol, protocols)
            if dd is None:
                continue
            for (o, n), boxes in sorted(_evaluate(e_old, e_new, dd, protocol, result.notes).items()):
                for box in sorted(_merge(boxes), key=lambda b: tuple(sorted(s) for s in b)):
                    result.changes.append(_row(w, dd, box, protocol, o, n))
    return result


def _restrict_ports(dims: list[ds.Dim], tcp_ports: list[int], protocol: str, mode: str) -> list[ds.Dim] | None:
    """With known TCP ports (mode auto): TCP is evaluated on them only, HTTP on the others."""
    if mode != "auto" or not tcp_ports:
        return dims
    out = []
    for d in dims:
        if d.name == "port":
            keep = [c for c in d.choices if (c.value in tcp_ports) == (protocol == "tcp")]
            if not keep:
                return None
            d = ds.Dim(d.name, d.l7, keep)
        out.append(d)
    return out


def verify(result: DiffResult, old: PolicySet, new: PolicySet, root_namespace: str) -> list[str]:
    """Re-decide every listed request through the `policy check` parser; problems, if any."""
    import json

    from secmesh.policy.request_json import parse_request

    problems = []
    for c in result.changes:
        req = parse_request(json.dumps(c.request), "<diff>")
        got = tuple(Engine(ps, req.workload, root_namespace).decide(req.conn, req.request, req.protocol).action
                    for ps in (old, new))
        if got != (c.old, c.new):
            problems.append(f"{c.summary}: expected {c.old}->{c.new}, got {got[0]}->{got[1]}")
    return problems
