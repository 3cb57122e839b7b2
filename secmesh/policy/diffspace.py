"""The request space of a semantic diff: each attribute partitioned into classes by the policies.

For one workload, every literal that a rule of either version mentions (principals,
namespaces, IP ranges, ports, methods, paths, headers, claims, …) yields a candidate value
for its attribute, plus an "other" value that matches none of them (and "absent" where an
attribute can be missing). Candidates that every compiled predicate of both versions
treats alike are one class; the first one represents it. Any request is then equivalent to
one combination of class representatives — so evaluating both versions on every
combination finds every change, and nothing is inferred from the YAML text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId
from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.compile import rule_preds
from secmesh.policy.model import AuthorizationPolicy
from secmesh.policy.normalize import InvalidPath, PathNormalization, normalize_path

OTHER = "other"
TD = "cluster.local"
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PROPFIND")
_OTHER_IPS = ("192.0.2.1", "198.51.100.1", "203.0.113.1", "100.64.0.1", "172.31.255.254", "9.9.9.9", "2001:db8::1")
L4_DIMS = ("principal", "source_ip", "remote_ip", "dest_ip", "port", "sni")


@dataclass(slots=True)
class Choice:
    value: Any
    label: str


@dataclass(slots=True)
class Dim:
    name: str
    l7: bool
    choices: list[Choice] = field(default_factory=list)

    def add(self, value: Any, label: str) -> None:
        if all(c.value != value for c in self.choices):
            self.choices.append(Choice(value, label))


def _affix(raw: str, filler: str = "x") -> tuple[str, str] | None:
    """An Istio string value → (a value it matches, the pattern as written); None for `*`."""
    if raw == "*":
        return None
    if raw.startswith("*"):
        return filler + raw[1:], raw
    if raw.endswith("*"):
        return raw[:-1] + filler, raw
    return raw, raw


def _spiffe(text: str) -> str | None:
    try:
        SpiffeId.parse(text)
    except InvalidSpiffeId:
        return None
    return text


class Collector:
    """Gathers candidate values per attribute from the rules of both versions."""

    def __init__(self) -> None:
        self.dims: dict[str, Dim] = {}
        self.tds: list[str] = []           # trust domains seen in principals
        self.td_literals: list[str] = []   # trust domains matched on explicitly
        self.principals: list[tuple[str, str]] = []
        self.namespaces: list[str] = []
        self.sas: list[tuple[str, str]] = []
        self.cidrs: dict[str, list[str]] = {"source_ip": [], "remote_ip": [], "dest_ip": []}
        self.ports: list[int] = []
        self.literals: set[str] = set()

    def dim(self, name: str, l7: bool) -> Dim:
        d = self.dims.get(name)
        if d is None:
            d = self.dims[name] = Dim(name, l7)
        return d

    def strings(self, name: str, values: Iterable[str], label: str, *, lower: bool = False,
                make: Callable[[str], str | None] | None = None) -> None:
        values = tuple(values)
        if not values:
            return
        d = self.dim(name, name not in L4_DIMS)
        for raw in values:
            self.literals.add(raw)
            got = _affix(raw.lower() if lower else raw)
            if got is None:
                continue
            value = make(got[0]) if make else got[0]
            if value is not None:
                d.add(value, f"{label} {got[1]}")

    # --- per field family -----------------------------------------------------------------

    def source(self, s: Any, policy_ns: str) -> None:
        for v in s.principals + s.not_principals:
            self.literals.add(v)
            got = _affix(v)
            if got:
                self.principals.append((got[0], got[1]))
                td = got[0].split("/", 1)[0]
                if "/" in got[0] and td and td not in self.tds:
                    self.tds.append(td)
        for v in s.namespaces + s.not_namespaces:
            self.literals.add(v)
            if v != "*":
                self.namespaces.append(v)
        for v in s.service_accounts + s.not_service_accounts:
            ns, slash, sa = v.partition("/")
            self.sas.append((ns, sa) if slash else (policy_ns, v))
        for v in s.trust_domains + s.not_trust_domains:
            got = _affix(v)
            if got and got[0] not in self.td_literals:
                self.td_literals.append(got[0])
        self.cidrs["source_ip"] += list(s.ip_blocks + s.not_ip_blocks)
        self.cidrs["remote_ip"] += list(s.remote_ip_blocks + s.not_remote_ip_blocks)
        for v in s.request_principals + s.not_request_principals:
            self._request_principal(v)

    def _request_principal(self, v: str) -> None:
        if v == "*":
            return
        idx = v.rfind("/")
        iss, sub = (v[:idx], v[idx + 1:]) if idx >= 0 else (v, "")
        if v.startswith("*") and idx < 0:
            self.strings("claim:sub", [v], "subject")
            return
        if v.endswith("*") and idx < 0:
            self.strings("claim:iss", [v], "issuer")
            return
        self.strings("claim:iss", [iss], "issuer")
        if sub:
            self.strings("claim:sub", [sub], "subject")

    def operation(self, o: Any) -> None:
        self.strings("method", o.methods + o.not_methods, "method")
        self.strings("host", o.hosts + o.not_hosts, "host", lower=True)
        self.paths(o.paths + o.not_paths)
        self.ports += [int(p) for p in o.ports + o.not_ports]

    def paths(self, values: Iterable[str]) -> None:
        values = tuple(values)
        if not values:
            return
        d = self.dim("path", True)
        for raw in values:
            self.literals.add(raw)
            if "{" in raw:
                value = raw.replace("{**}", "x/y").replace("{*}", "x")
            else:
                got = _affix(raw)
                if got is None:
                    continue
                value = got[0] if got[0].startswith("/") else "/" + got[0]
            if _normal(value):
                d.add(value, f"path {raw}")

    def condition(self, c: Any, policy_ns: str) -> None:
        k, vals = c.key, c.values + c.not_values
        if k in ("source.ip", "remote.ip", "destination.ip"):
            self.cidrs[{"source.ip": "source_ip", "remote.ip": "remote_ip", "destination.ip": "dest_ip"}[k]] += vals
        elif k == "destination.port":
            self.ports += [int(v) for v in vals]
        elif k == "connection.sni":
            self.strings("sni", vals, "SNI")
        elif k == "source.principal":
            for v in vals:
                got = _affix(v)
                if got:
                    self.principals.append(got)
        elif k == "source.namespace":
            self.namespaces += [v for v in vals if v != "*"]
        elif k == "source.serviceAccount":
            self.sas += [(v.partition("/")[0], v.partition("/")[2]) if "/" in v else (policy_ns, v) for v in vals]
        elif k == "source.trustDomain":
            self.td_literals += [g[0] for v in vals if (g := _affix(v))]
        elif k == "request.auth.principal":
            for v in vals:
                self._request_principal(v)
        elif k == "request.auth.audiences":
            self.strings("claim:aud", vals, "audience")
        elif k == "request.auth.presenter":
            self.strings("claim:azp", vals, "presenter")
        elif k.startswith("request.auth.claims["):
            path = k[len("request.auth.claims["):-1].split("][")
            self.strings("claim:" + ".".join(path), vals, "claim " + ".".join(path) + " =")
        elif k.startswith(("request.headers[", "request.experimental.inline.headers[")):
            name = k[k.index("[") + 1:-1].lower()
            self.strings("header:" + name, vals, f"header {name}:")

    def policy(self, ap: AuthorizationPolicy) -> None:
        for rule in ap.rules or ():
            for s in rule.from_ or ():
                self.source(s, ap.meta.namespace)
            for o in rule.to or ():
                self.operation(o)
            for c in rule.when:
                self.condition(c, ap.meta.namespace)


def _normal(path: str) -> bool:
    try:
        return normalize_path(path, PathNormalization.BASE) == path
    except InvalidPath:
        return False


def _other(literals: set[str], base: str = OTHER) -> str:
    n, token = 1, base
    while any(token in lit for lit in literals):
        n += 1
        token = f"{base}{n}"
    return token


def _ip_choices(d: Dim, cidrs: list[str], what: str) -> None:
    nets = []
    for c in cidrs:
        try:
            nets.append((c, ipaddress.ip_network(c, strict=False)))
        except ValueError:
            continue
    for text, net in nets:
        label = f"{what} in {text}"
        first, last = net.network_address, net.broadcast_address
        if net.num_addresses > 2:  # a host address reads better than the network's own
            first, last = first + 1, last - 1
        d.add(str(first), label)
        d.add(str(last), label)
    for ip in _OTHER_IPS:
        a = ipaddress.ip_address(ip)
        if not any(a.version == n.version and a in n for _, n in nets):
            d.add(ip, f"other {what}s")
            return


def _few(items: Iterable[Any], n: int = 3) -> str:
    items = sorted({str(i) for i in items})
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")


def build(col: Collector, extra_ports: Iterable[int]) -> list[Dim]:
    """Finish the dimensions: principal, IPs, ports, and the `other`/absent classes."""
    other = _other(col.literals)
    tds = list(dict.fromkeys(col.td_literals + col.tds)) or [TD]
    p = col.dim("principal", False)
    for v, raw in col.principals:
        if (s := _spiffe("spiffe://" + v)) is not None:
            p.add(s, f"principal {raw}")
        elif raw.startswith("*") and (s := _spiffe(f"spiffe://{tds[0]}/ns/{other}/sa/{other}" + v[1:])):
            p.add(s, f"principal {raw}")
    for ns, sa in col.sas:
        for td in tds:
            if (s := _spiffe(f"spiffe://{td}/ns/{ns}/sa/{sa}")) is not None:
                p.add(s, f"service account {ns}/{sa}")
    for ns in col.namespaces:
        for td in tds:
            if (s := _spiffe(f"spiffe://{td}/ns/{ns.replace('*', 'x')}/sa/{other}")) is not None:
                p.add(s, f"namespace {ns}")
    for td in col.td_literals:
        if (s := _spiffe(f"spiffe://{td}/ns/{other}/sa/{other}")) is not None:
            p.add(s, f"trust domain {td}")
    p.add(f"spiffe://{tds[0]}/ns/{other}/sa/{other}", "other mTLS peers" if p.choices else "any mTLS peer")
    if col.td_literals:
        p.add(f"spiffe://{other}.example/ns/{other}/sa/{other}", "other trust domains")
    p.add(None, "plaintext (no principal)")
    for name, what in (("source_ip", "source IP"), ("remote_ip", "remote IP"), ("dest_ip", "destination IP")):
        if col.cidrs[name] or name == "source_ip":
            _ip_choices(col.dim(name, False), col.cidrs[name], what)
    ports = sorted(set(col.ports) | set(extra_ports))
    pd = col.dim("port", False)
    for port in ports:
        pd.add(port, f"port {port}")
    pd.add(next(q for q in (8080, 8000, 9000, 10000, 20000, 30000, 40000) if q not in ports),
           f"ports other than {_few(ports)}" if ports else "any port")
    for d in list(col.dims.values()):
        if d.name == "method":
            exact = {c.value for c in d.choices}
            d.add(next(m for m in _METHODS if m not in exact), f"methods other than {_few(exact)}")
        elif d.name == "path":
            d.add("/" + other, f"paths other than {_few(c.label.split(' ', 1)[1] for c in d.choices)}")
        elif d.name == "host":
            d.add(f"{other}.example", "other hosts")
            d.add(None, "no host")
        elif d.name == "sni":
            d.add(f"{other}.example", "other SNI")
            d.add(None, "no SNI")
        elif d.name.startswith(("header:", "claim:")):
            d.add(other, f"other {d.name.split(':', 1)[1]} values")
            d.add(None, f"no {d.name.split(':', 1)[1]}")
    if "method" not in col.dims:
        col.dim("method", True).add("GET", "any method")
    if "path" not in col.dims:
        col.dim("path", True).add("/", "any path")
    order = {n: i for i, n in enumerate(L4_DIMS)}
    return sorted(col.dims.values(), key=lambda d: (d.l7, order.get(d.name, 99), d.name))


# --- building attributes from a combination ---------------------------------------------------

def conn_attrs(dims: list[Dim], combo: tuple[int, ...]) -> ConnAttrs:
    v = {d.name: d.choices[i].value for d, i in zip(dims, combo)}
    return ConnAttrs(v.get("principal"), v.get("source_ip"), v.get("remote_ip", v.get("source_ip")),
                     v.get("dest_ip"), v.get("port"), v.get("sni"))


def claims_of(values: dict[str, Any]) -> dict[str, Any] | None:
    claims: dict[str, Any] = {}
    for name, value in values.items():
        if not name.startswith("claim:") or value is None:
            continue
        parts = name[len("claim:"):].split(".")
        cur = claims
        for part in parts[:-1]:
            nxt = cur.get(part)
            if not isinstance(nxt, dict):
                nxt = cur[part] = {}
            cur = nxt
        cur[parts[-1]] = value
    return claims or None


def request_attrs(dims: list[Dim], combo: tuple[int, ...]) -> RequestAttrs:
    v = {d.name: d.choices[i].value for d, i in zip(dims, combo)}
    headers = {n[len("header:"):]: x for n, x in v.items() if n.startswith("header:") and x is not None}
    return RequestAttrs(method=v.get("method", "GET"), path=v.get("path", "/"), host=v.get("host"),
                        headers=headers, claims=claims_of(v))


def signature_dedupe(dims: list[Dim], preds4: list[Any], preds7: list[Any]) -> None:
    """Keep one candidate per class: candidates no predicate tells apart are one class."""
    base = [0] * len(dims)
    for k, d in enumerate(dims):
        if len(d.choices) < 2:
            continue
        seen: dict[tuple[bool, ...], Choice] = {}
        for i, c in enumerate(d.choices):
            combo = list(base)
            combo[k] = i
            if d.l7:
                q = request_attrs(dims, tuple(combo))
                sig = tuple(bool(p.fn(q)) for p in preds7)
            else:
                conn = conn_attrs(dims, tuple(combo))
                sig = tuple(bool(p.fn(conn)) for p in preds4) + (c.value is None,)
            if d.name == "port":
                sig += (c.value,)  # PeerAuthentication may tell ports apart too
            seen.setdefault(sig, c)
        d.choices = list(seen.values())


def predicates(aps: Iterable[AuthorizationPolicy]) -> tuple[list[Any], list[Any]]:
    preds4: list[Any] = []
    preds7: list[Any] = []
    for ap in aps:
        for rule in ap.rules or ():
            whens, froms, tos = rule_preds(ap, rule)
            for p in whens + [p for conj in (froms or []) + (tos or []) for p in conj]:
                (preds7 if p.l7 else preds4).append(p)
    return preds4, preds7
