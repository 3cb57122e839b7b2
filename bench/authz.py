"""Authorization engine micro-benchmark: µs per decision at 10 / 1,000 / 10,000 rules, and compile time.

Policy sets are generated to look like real meshes: one ALLOW policy per calling service
(principal or namespace, methods, exact/prefix/template paths, sometimes a header or a
port), some ipBlock and JWT rules, a few DENY policies on path prefixes and AUDIT on
writes, split between the workload's namespace and the root namespace. Requests draw
from the same principals/paths so that matches, near misses and misses all occur.

Phases measured (per decision, best of --repeat runs):
  L4 tcp       decide_connection on a TCP port (connection attributes only)
  L4 http      decide_connection on an HTTP port (partial evaluation, residual kept)
  L4 cold      the same with the engine's per-bucket-combination memo disabled (what a peer
               that never repeats its index hits costs: the worst case)
  L7 request   decide_request on a kept residual (the per-request cost on a live connection)
  L4+L7        both phases for a fresh connection with one request
  conn+req     ConnAttrs built from strings (as the sidecar does per connection) + L4 + L7

Run: .venv/bin/python bench/authz.py [--sizes 10,1000,10000] [--decisions 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secmesh.policy.attrs import ConnAttrs, RequestAttrs  # noqa: E402
from secmesh.policy.engine import Engine  # noqa: E402
from secmesh.policy.model import (Action, AuthorizationPolicy, Condition, Meta, Operation, PolicySet, Rule,  # noqa: E402
                                  Source, Workload)

NS = "shop"
WORKLOAD = Workload(NS, {"app": "api", "version": "v1"})
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def _services(n: int) -> list[tuple[str, str]]:
    return [(f"ns{i % max(1, n // 20)}", f"svc{i}") for i in range(n)]


def generate(n_rules: int, seed: int = 7) -> tuple[PolicySet, dict]:
    rnd = random.Random(seed)
    services = _services(max(4, n_rules // 4))
    paths = [f"/api/v{1 + i % 3}/res{i}" for i in range(max(8, n_rules // 3))]
    aps: list[AuthorizationPolicy] = []
    rules: list[Rule] = []
    count = 0
    pol = 0

    def flush(action: Action, ns: str) -> None:
        nonlocal rules, pol
        if rules:
            pol += 1
            aps.append(AuthorizationPolicy(Meta(f"p{pol}", ns, order=pol), action,
                                           selector={"app": "api"} if pol % 3 else None, rules=tuple(rules)))
            rules = []

    while count < n_rules:
        kind = rnd.random()
        ns_i, sa = rnd.choice(services)
        path = rnd.choice(paths)
        if kind < 0.45:
            op = Operation(methods=tuple(rnd.sample(METHODS, rnd.randint(1, 2))),
                           paths=(path, path + "/*") if rnd.random() < 0.5 else (path + "/{*}",))
            src = Source(principals=(f"cluster.local/ns/{ns_i}/sa/{sa}",))
            when = (Condition("request.headers[x-tenant]", (f"t{rnd.randint(0, 9)}",)),) if rnd.random() < 0.2 else ()
            rules.append(Rule(from_=(src,), to=(op,), when=when))
        elif kind < 0.6:
            rules.append(Rule(from_=(Source(namespaces=(ns_i,)),), to=(Operation(paths=(path + "*",)),)))
        elif kind < 0.7:
            rules.append(Rule(from_=(Source(ip_blocks=(f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.0/24",)),),
                              to=(Operation(ports=(str(rnd.choice([8080, 9090])),)),)))
        elif kind < 0.78:
            rules.append(Rule(from_=(Source(request_principals=(f"https://idp.example.com/user{rnd.randint(0, 999)}",)),),
                              to=(Operation(methods=("GET",), paths=(path,)),)))
        elif kind < 0.86:
            rules.append(Rule(from_=(Source(service_accounts=(f"{ns_i}/{sa}",)),), to=(Operation(ports=("8080",)),)))
        else:
            rules.append(Rule(from_=(Source(principals=(f"cluster.local/ns/{ns_i}/sa/{sa}",)),)))
        count += 1
        if len(rules) >= 10:
            flush(Action.ALLOW, NS if pol % 4 else "istio-system")
    flush(Action.ALLOW, NS)
    n_deny = max(1, n_rules // 50)
    aps.append(AuthorizationPolicy(Meta("deny-admin", NS, order=pol + 1), Action.DENY, rules=tuple(
        Rule(to=(Operation(paths=(f"/admin{i}/*",)),)) for i in range(n_deny))))
    aps.append(AuthorizationPolicy(Meta("deny-evil", "istio-system", order=pol + 2), Action.DENY, rules=(
        Rule(from_=(Source(principals=("cluster.local/ns/evil/sa/*",)),)),)))
    aps.append(AuthorizationPolicy(Meta("audit-writes", NS, order=pol + 3), Action.AUDIT, rules=(
        Rule(to=(Operation(methods=("POST", "PUT", "DELETE")),)),)))
    return PolicySet(tuple(aps)), {"services": services, "paths": paths}


def workload_mix(info: dict, n: int, seed: int = 11) -> list[tuple[ConnAttrs, RequestAttrs]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        ns_i, sa = rnd.choice(info["services"])
        if rnd.random() < 0.1:
            ns_i, sa = "evil", "x"
        conn = ConnAttrs(f"spiffe://cluster.local/ns/{ns_i}/sa/{sa}",
                         f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}",
                         None, "10.9.9.9", rnd.choice([8080, 9090]), None)
        path = rnd.choice(info["paths"]) + rnd.choice(["", "/1", "/a/b", "?q=1"])
        if rnd.random() < 0.05:
            path = "/admin3/x"
        claims = {"iss": "https://idp.example.com", "sub": f"user{rnd.randint(0, 999)}"} if rnd.random() < 0.3 else None
        req = RequestAttrs.from_raw(rnd.choice(METHODS), path, host="api.shop.svc",
                                    headers={"x-tenant": f"t{rnd.randint(0, 9)}", "user-agent": "bench"}, claims=claims)
        out.append((conn, req))
    return out


class _NoMemo(dict):
    """A memo that never remembers: every connection takes the cold path."""

    def __setitem__(self, key, value) -> None:
        pass


REPEAT = 5


def _time(fn, items, repeat: int | None = None) -> float:
    repeat = repeat or REPEAT
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - t0)
    return best / len(items) * 1e6


def run(size: int, decisions: int) -> dict:
    policies, info = generate(size)
    t0 = time.perf_counter()
    engine = Engine(policies, WORKLOAD)
    compile_s = time.perf_counter() - t0
    mix = workload_mix(info, decisions)
    conns = [c for c, _ in mix]
    residuals = [(engine.decide_connection(c, "http").residual, r) for c, r in mix]

    def l4_tcp(items):
        dc = engine.decide_connection
        for c in items:
            dc(c, "tcp")

    def l4_http(items):
        dc = engine.decide_connection
        for c in items:
            dc(c, "http")

    def l7(items):
        dr = engine.decide_request
        for res, r in items:
            dr(res, r)

    def both(items):
        dc, dr = engine.decide_connection, engine.decide_request
        for c, r in items:
            dr(dc(c, "http").residual, r)

    raw = [((c.principal, _ip_text(c.source_ip), _ip_text(c.dest_ip), c.dest_port), r) for c, r in mix]

    def with_attrs(items):
        dc, dr = engine.decide_connection, engine.decide_request
        for (p, sip, dip, port), r in items:
            dr(dc(ConnAttrs(p, sip, None, dip, port, None), "http").residual, r)

    def l4_cold(items):
        saved = engine.http.memo
        engine.http.memo = _NoMemo()
        try:
            l4_http(items)
        finally:
            engine.http.memo = saved

    allowed = sum(engine.decide_request(res, r).allowed for res, r in residuals)
    return {"rules": len(engine.http.rules), "compile_ms": compile_s * 1e3, "l4_tcp": _time(l4_tcp, conns),
            "l4_http": _time(l4_http, conns), "l4_cold": _time(l4_cold, conns) if hasattr(engine.http, "memo") else 0.0,
            "l7": _time(l7, residuals), "both": _time(both, mix), "attrs": _time(with_attrs, raw),
            "allowed_pct": 100.0 * allowed / len(mix), "stats": engine.stats()}


def _ip_text(key) -> str | None:
    import ipaddress
    return None if key is None else str(ipaddress.ip_address(key[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5, help="runs per phase; the best is reported")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    rows = [run(int(s), args.decisions) for s in args.sizes.split(",")]
    print(f"{'rules':>7} {'compile ms':>11} {'L4 tcp µs':>10} {'L4 http µs':>11} {'L4 cold µs':>11} {'L7 req µs':>10} "
          f"{'L4+L7 µs':>9} {'conn+req µs':>12} {'allowed %':>9}")
    for r in rows:
        print(f"{r['rules']:>7} {r['compile_ms']:>11.1f} {r['l4_tcp']:>10.2f} {r['l4_http']:>11.2f} {r['l4_cold']:>11.2f} "
              f"{r['l7']:>10.2f} {r['both']:>9.2f} {r['attrs']:>12.2f} {r['allowed_pct']:>9.1f}")
    last = rows[-1]
    print(f"\nindexes at {last['rules']} rules: {last['stats']}")
    goal_ok = last["compile_ms"] < 1000 and max(last["l4_tcp"], last["l4_http"], last["l7"]) <= 5.0
    print(f"goal (≤5 µs/decision, compile <1 s at the largest size): {'met' if goal_ok else 'NOT met'}"
          f"  [median L4+L7 over sizes: {statistics.median(r['both'] for r in rows):.2f} µs]")


if __name__ == "__main__":
    main()
