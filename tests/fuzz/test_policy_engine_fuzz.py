"""Property: the compiled, indexed, partially-evaluating engine decides exactly like a naive evaluator.

The reference below is written straight from Istio's documented semantics and its generator
(regexes over the principal, `.+` for `*`, HTTP-only fields on TCP), scanning every rule
with full attributes — no index, no partial evaluation, no shared matcher code.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.engine import Engine
from secmesh.policy.model import (Action, AuthorizationPolicy, Condition, Meta, Operation, PolicySet, Rule, Source,
                                  Workload)

WL = Workload("a", {"app": "x"})
PRINCIPALS = ["td/ns/a/sa/x", "td/ns/b/sa/y", "td/ns/a/*", "*/sa/y", "*", "td/ns/b/sa/*"]
NAMESPACES = ["a", "b", "a*", "*", "*b"]
SAS = ["a/x", "b/y", "x"]
IPS = ["10.0.0.0/8", "10.1.0.0/16", "192.168.1.1", "2001:db8::/32"]
PATHS = ["/a", "/a/*", "*/b", "/x/{*}", "/x/{**}", "*", "/a/b"]
METHODS = ["GET", "POST", "*", "G*"]
HOSTS = ["web", "WEB.*", "*.svc", "*"]
PORTS = ["80", "81"]
REQ_PRINCIPALS = ["iss/alice", "iss/*", "*", "*/bob", "other/alice"]
WHEN = [("request.headers[x-h]", ["1", "*", "2*"]), ("source.ip", ["10.0.0.0/8", "10.2.3.4"]),
        ("destination.port", ["80", "81"]), ("request.auth.claims[role]", ["admin", "dev*"]),
        ("connection.sni", ["a.example", "*.example"]), ("source.namespace", ["a", "b*"]),
        ("request.auth.audiences", ["api", "w*"])]

REQ_P = [None, "spiffe://td/ns/a/sa/x", "spiffe://td/ns/b/sa/y", "spiffe://td/ns/b/sa/yy", "spiffe://td/ns/ab/sa/x"]
REQ_PATHS = ["/a", "/a/b", "/x/1", "/x/1/2", "/b", "/zzz/b", "/x/"]


def sub(xs: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(xs), min_size=1, max_size=2, unique=True).map(tuple)


def maybe(xs: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.one_of(st.just(()), sub(xs))


sources = st.one_of(
    st.builds(Source, principals=maybe(PRINCIPALS), not_principals=maybe(PRINCIPALS), namespaces=maybe(NAMESPACES),
              ip_blocks=maybe(IPS), not_ip_blocks=maybe(IPS), request_principals=maybe(REQ_PRINCIPALS),
              remote_ip_blocks=maybe(IPS)),
    st.builds(Source, service_accounts=sub(SAS), not_service_accounts=maybe(SAS)))
operations = st.builds(Operation, paths=maybe(PATHS), not_paths=maybe(PATHS), methods=maybe(METHODS),
                       hosts=maybe(HOSTS), ports=maybe(PORTS), not_ports=maybe(PORTS))
conditions = st.sampled_from(WHEN).flatmap(
    lambda kv: st.builds(Condition, key=st.just(kv[0]), values=maybe(kv[1]), not_values=maybe(kv[1]))
).filter(lambda c: bool(c.values or c.not_values))
rules = st.builds(Rule, from_=st.one_of(st.none(), st.lists(sources, min_size=1, max_size=2).map(tuple)),
                  to=st.one_of(st.none(), st.lists(operations, min_size=1, max_size=2).map(tuple)),
                  when=st.lists(conditions, max_size=2).map(tuple))


@st.composite
def policy_sets(draw: Any) -> PolicySet:
    aps = []
    for i in range(draw(st.integers(0, 5))):
        action = draw(st.sampled_from([Action.ALLOW, Action.ALLOW, Action.DENY, Action.AUDIT]))
        rs = draw(st.one_of(st.none(), st.lists(rules, min_size=1, max_size=3).map(tuple)))
        if action is not Action.ALLOW and rs is None:
            rs = (Rule(),)
        dry = draw(st.booleans()) and draw(st.booleans()) and action is not Action.AUDIT
        ann = {"istio.io/dry-run": "true"} if dry else {}
        ns = draw(st.sampled_from(["a", "a", "istio-system", "other"]))
        aps.append(AuthorizationPolicy(Meta(f"p{i}", ns, annotations=ann, order=i), action, rules=rs))
    return PolicySet(tuple(aps))


@st.composite
def requests(draw: Any) -> tuple[str, ConnAttrs, RequestAttrs]:
    protocol = draw(st.sampled_from(["http", "tcp"]))
    conn = ConnAttrs(draw(st.sampled_from(REQ_P)), draw(st.sampled_from(["10.0.0.1", "10.1.2.3", "192.168.1.1",
                                                                          "2001:db8::5"])),
                     draw(st.sampled_from(["10.2.3.4", "8.8.8.8"])), "10.9.9.9", draw(st.sampled_from([80, 81])),
                     draw(st.sampled_from([None, "a.example", "b.example"])))
    claims = draw(st.sampled_from([None, {"iss": "iss", "sub": "alice", "role": "admin", "aud": ["api", "web"]},
                                   {"iss": "iss", "sub": "bob", "role": ["ops", "dev1"], "aud": "web"},
                                   {"iss": "other", "sub": "", "role": "x"}]))
    headers = draw(st.sampled_from([{}, {"x-h": "1"}, {"x-h": "2b"}, {"x-h": ""}]))
    req = RequestAttrs(draw(st.sampled_from(["GET", "POST", "PUT"])), draw(st.sampled_from(REQ_PATHS)),
                       draw(st.sampled_from(["web", "Web.default.svc", "x"])), headers, claims)
    return protocol, conn, req


# --- the reference evaluator ---------------------------------------------------------------

def _rx(v: str, prefix: str = "") -> str:
    if v == "*":
        return ".+"
    if v.startswith("*"):
        return re.escape(prefix) + ".*" + re.escape(v[1:])
    if v.endswith("*"):
        return re.escape(prefix + v[:-1]) + ".*"
    return re.escape(prefix + v)


def _m(v: str, s: Any, prefix: str = "", flags: int = 0) -> bool:
    return isinstance(s, str) and re.fullmatch(_rx(v, prefix), s, flags | re.S) is not None


def _ip(block: str, ip: str | None) -> bool:
    return ip is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(block, strict=False)


def _tmpl(v: str, p: str) -> bool:
    lit = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]"
    rx = re.escape(v).replace(re.escape("{**}"), f"(?:{lit}|/)*").replace(re.escape("{*}"), f"{lit}+")
    return re.fullmatch(rx, p) is not None


def _claim(values: tuple[str, ...], v: Any) -> bool:
    items = v.split() if False else ([v] if isinstance(v, str) else v if isinstance(v, list) else [])
    return any(_m(x, i) for x in values for i in items if isinstance(i, str))


def _req_principal(v: str, claims: Any) -> bool:
    if not claims:
        return False
    iss, sub_ = claims.get("iss"), claims.get("sub")
    i = v.rfind("/")
    vi, vs = (v[:i], v[i + 1:]) if i >= 0 else (v, "")
    if v == "*":
        return _m("*", iss) and _m("*", sub_)
    if v.startswith("*"):
        return (_m("*", iss) if i < 0 or vi == "*" else _m(vi, iss)) and (_m(v, sub_) if i < 0 else sub_ == vs)
    if v.endswith("*"):
        return (_m(v, iss) if i < 0 else iss == vi) and (_m("*", sub_) if i < 0 or vs == "*" else _m(vs, sub_))
    return iss == vi and sub_ == vs


def _field(key: str, v: str, c: ConnAttrs, q: RequestAttrs, ns: str, sa_ns: str) -> bool:
    p = c.principal
    ip_s = None if c.source_ip is None else str(ipaddress.ip_address(c.source_ip[1]))
    rip_s = None if c.remote_ip is None else str(ipaddress.ip_address(c.remote_ip[1]))
    if key == "principals" or key == "source.principal":
        return _m(v, p, "spiffe://") if v != "*" else _m(v, p)
    if key in ("namespaces", "source.namespace"):
        return p is not None and re.fullmatch(".*/ns/" + ".*".join(map(re.escape, v.split("*"))) + "/.*", p) is not None
    if key == "serviceAccounts":
        n, _, s = v.partition("/") if "/" in v else (sa_ns, "/", v)
        return p is not None and re.fullmatch(f"spiffe://.+/ns/{re.escape(n)}/(.+/|)sa/{re.escape(s)}(/.+)?", p) is not None
    if key in ("ipBlocks", "source.ip"):
        return _ip(v, ip_s)
    if key == "remoteIpBlocks":
        return _ip(v, rip_s)
    if key == "requestPrincipals":
        return _req_principal(v, q.claims)
    if key == "paths":
        return _tmpl(v, q.path) if "{" in v else _m(v, q.path)
    if key == "methods":
        return True if v == "*" else _m(v, q.method)
    if key == "hosts":
        return q.host is not None if v == "*" else _m(v, q.host, flags=re.I)
    if key in ("ports", "destination.port"):
        return c.dest_port == int(v)
    if key == "request.headers[x-h]":
        h = q.headers.get("x-h")
        return h is not None if v == "*" else _m(v, h)
    if key == "request.auth.claims[role]":
        return _claim((v,), (q.claims or {}).get("role"))
    if key == "request.auth.audiences":
        return _claim((v,), (q.claims or {}).get("aud"))
    if key == "connection.sni":
        return _m(v, c.sni)
    raise AssertionError(key)


HTTP_ONLY = {"requestPrincipals", "paths", "methods", "hosts", "request.headers[x-h]", "request.auth.claims[role]",
             "request.auth.audiences"}


def _fields_of(obj: Any) -> list[tuple[str, tuple[str, ...], bool]]:
    out = []
    for name in obj.__slots__:
        if name == "pos":
            continue
        vals = getattr(obj, name)
        if vals:
            neg = name.startswith("not_")
            base = name[4:] if neg else name
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), base)
            out.append((camel, vals, neg))
    return out


def ref_rule(ap: AuthorizationPolicy, rule: Rule, c: ConnAttrs, q: RequestAttrs, tcp: bool) -> bool | None:
    """True/False, or None when Istio skips the rule (ALLOW with HTTP fields on TCP)."""
    ns = ap.meta.namespace
    conds = [(w.key, w.values, False) for w in rule.when if w.values] + \
            [(w.key, w.not_values, True) for w in rule.when if w.not_values]
    groups = [[_fields_of(s) for s in rule.from_]] if rule.from_ is not None else []
    groups += [[_fields_of(o) for o in rule.to]] if rule.to is not None else []
    every = conds + [f for g in groups for conj in g for f in conj]
    if tcp and any(k in HTTP_ONLY for k, _, _ in every):
        if ap.action is Action.ALLOW:
            return None
        conds = [f for f in conds if f[0] not in HTTP_ONLY]
        groups = [[[f for f in conj if f[0] not in HTTP_ONLY] for conj in g] for g in groups]

    def ok(f: tuple[str, tuple[str, ...], bool]) -> bool:
        hit = any(_field(f[0], v, c, q, ns, ns) for v in f[1])
        return not hit if f[2] else hit
    return all(ok(f) for f in conds) and all(any(all(ok(f) for f in conj) for conj in g) for g in groups)


def reference(ps: PolicySet, protocol: str, c: ConnAttrs, q: RequestAttrs) -> tuple[Any, ...]:
    tcp = protocol == "tcp"
    firsts: dict[str, tuple[str, str, int]] = {}
    has_allow = False
    shadow = set()
    for ap in ps.authorization:
        if ap.meta.namespace not in ("a", "istio-system"):
            continue
        group = ap.action.value.lower()
        if ap.dry_run:
            group = "shadow_" + group
            shadow.add(group)
        elif ap.action is Action.ALLOW:
            has_allow = True
        for i, rule in enumerate(ap.rules or ()):
            if ref_rule(ap, rule, c, q, tcp):
                key = (f"ns[{ap.meta.namespace}]-policy[{ap.meta.name}]-rule[{i}]", ap.meta.name, i)
                if group not in firsts or key < firsts[group]:
                    firsts[group] = key
    if "deny" in firsts:
        verdict = (False, firsts["deny"][1:])
    elif has_allow:
        verdict = (True, firsts["allow"][1:]) if "allow" in firsts else (False, None)
    else:
        verdict = (True, None)
    dry = tuple(sorted((g, g in firsts) for g in shadow))
    return verdict, "audit" in firsts, dry


def engine_view(ps: PolicySet, protocol: str, c: ConnAttrs, q: RequestAttrs) -> tuple[Any, ...]:
    e = Engine(ps, WL)
    cd = e.decide_connection(c, protocol)
    d = cd.decision if protocol == "tcp" else e.decide_request(cd.residual, q)
    if protocol == "http" and cd.outcome.value != "NEEDS_REQUEST":
        assert cd.outcome.value == d.action, "a final L4 outcome must agree with the full decision"
    ref = (d.policy.name, d.policy.rule) if d.policy else None
    dry = tuple(sorted(("shadow_" + s.action.lower(), s.policy is not None) for s in d.dry_run))
    return (d.allowed, ref), d.audit, dry


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), requests())
def test_engine_agrees_with_reference(ps: PolicySet, req: tuple[str, ConnAttrs, RequestAttrs]) -> None:
    protocol, c, q = req
    assert engine_view(ps, protocol, c, q) == reference(ps, protocol, c, q)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(requests(), min_size=2, max_size=8))
def test_one_engine_many_requests_agrees_with_reference(ps: PolicySet,
                                                         reqs: list[tuple[str, ConnAttrs, RequestAttrs]]) -> None:
    """One engine serves many connections: its memos (per index-hit combination, per evaluated
    predicate pattern) must never leak one connection's answer into another's."""
    e = Engine(ps, WL)
    for _ in range(2):  # the second pass is answered from the memos
        for protocol, c, q in reqs:
            cd = e.decide_connection(c, protocol)
            d = cd.decision if protocol == "tcp" else e.decide_request(cd.residual, q)
            ref = (d.policy.name, d.policy.rule) if d.policy else None
            dry = tuple(sorted(("shadow_" + s.action.lower(), s.policy is not None) for s in d.dry_run))
            assert ((d.allowed, ref), d.audit, dry) == reference(ps, protocol, c, q)
            if protocol == "http":  # every request on this one connection (a kept residual)
                for _, _, q2 in reqs:
                    d2 = e.decide_request(cd.residual, q2)
                    ref2 = (d2.policy.name, d2.policy.rule) if d2.policy else None
                    assert (d2.allowed, ref2) == reference(ps, "http", c, q2)[0]
