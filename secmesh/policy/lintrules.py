"""The warnings of `policy lint`: valid Istio that very likely does not do what it says.

Each check is a pure function over the loaded, *valid* objects (with their YAML nodes, for
positions) and the inventory of known workloads, and yields (object, Diagnostic) pairs so
that the driver can honour per-object suppressions. The traps are the ones Istio users hit
in practice: HTTP fields on TCP ports (a silently smaller ALLOW, a silently wider DENY),
principals without mTLS, `requestPrincipals: ["*"]` vs tokens without `sub`, ALLOW rules a
DENY rule always beats, selectors that match nothing, and deprecated API versions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from secmesh.policy.diagnostics import Diagnostic, at as diag_at
from secmesh.policy.inventory import Inventory, KnownWorkload
from secmesh.policy.model import (Action, AuthorizationPolicy, MtlsMode, PolicySet, RequestAuthentication, Rule,
                                  Workload)
from secmesh.policy.peerauth import PeerAuthResolver
from secmesh.policy.validate import at
from secmesh.policy.yamlsrc import Node

HTTP_WHEN_PREFIXES = ("request.headers", "request.auth.", "request.experimental.inline.headers")
IDENTITY_SOURCE = (("principals", "principals"), ("namespaces", "namespaces"),
                   ("serviceAccounts", "service_accounts"), ("trustDomains", "trust_domains"))
IDENTITY_WHEN = ("source.principal", "source.namespace", "source.serviceAccount", "source.trustDomain")


@dataclass(slots=True)
class Linted:
    """A valid object as the linter keeps it: the model, its YAML node, its suppressions."""

    obj: Any
    node: Node
    ignore: frozenset[str] = frozenset()

    @property
    def spec(self) -> Node:
        v = self.node.value
        if "spec" in v and v["spec"] is not None and isinstance(v["spec"], dict):
            return self.node.child("spec")
        return self.node

    def where(self, *path: Any) -> Any:
        return at(self.spec, *path).pos


@dataclass(slots=True)
class Context:
    objects: list[Linted]
    policies: PolicySet
    inventory: Inventory
    root_namespace: str
    _pa: dict[Any, PeerAuthResolver] = field(default_factory=dict)

    def peer(self, workload: Workload) -> PeerAuthResolver:
        key = (workload.namespace, tuple(sorted(workload.labels.items())))
        r = self._pa.get(key)
        if r is None:
            r = self._pa[key] = PeerAuthResolver(self.policies, workload, self.root_namespace)
        return r

    def in_scope(self, namespace: str, selector: Any) -> list[KnownWorkload]:
        ns = None if namespace == self.root_namespace else namespace
        return [w for w in self.inventory.in_namespace(ns) if w.matched_by(selector)]


Finding = tuple[Linted, Diagnostic]


def _aps(ctx: Context) -> Iterator[tuple[Linted, AuthorizationPolicy]]:
    for lo in ctx.objects:
        if isinstance(lo.obj, AuthorizationPolicy):
            yield lo, lo.obj


def http_fields(rule: Rule) -> list[tuple[tuple[Any, ...], str]]:
    """(path below the rule, field) of every HTTP-only field of a rule."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for j, src in enumerate(rule.from_ or ()):
        for camel, py in (("requestPrincipals", "request_principals"),
                          ("notRequestPrincipals", "not_request_principals")):
            if getattr(src, py):
                out.append((("from", j, "source", camel), camel))
    for j, op in enumerate(rule.to or ()):
        for camel, py in (("hosts", "hosts"), ("notHosts", "not_hosts"), ("methods", "methods"),
                          ("notMethods", "not_methods"), ("paths", "paths"), ("notPaths", "not_paths")):
            if getattr(op, py):
                out.append((("to", j, "operation", camel), camel))
    for j, c in enumerate(rule.when):
        if c.key.startswith(HTTP_WHEN_PREFIXES):
            out.append((("when", j, "key"), c.key))
    return out


def has_l4_field(rule: Rule) -> bool:
    for src in rule.from_ or ():
        if any(getattr(src, n) for n in src.__slots__ if n not in ("pos", "request_principals",
                                                                     "not_request_principals")):
            return True
    for op in rule.to or ():
        if op.ports or op.not_ports:
            return True
    return any(not c.key.startswith(HTTP_WHEN_PREFIXES) for c in rule.when)


def rule_ports(rule: Rule) -> tuple[set[int] | None, set[int]]:
    """(ports the rule is limited to, or None for any; ports it excludes)."""
    only: set[int] | None = None
    excluded: set[int] = set()
    ops = rule.to or ()
    if ops and all(op.ports for op in ops):
        only = {int(p) for op in ops for p in op.ports}
    for op in ops:
        excluded |= {int(p) for p in op.not_ports}
    for c in rule.when:
        if c.key == "destination.port":
            vals = {int(v) for v in c.values}
            if vals:
                only = vals if only is None else only & vals
            excluded |= {int(v) for v in c.not_values}
    return only, excluded


# --- W101 / W103: HTTP fields and TCP ---------------------------------------------------------

def http_on_tcp(ctx: Context) -> Iterator[Finding]:
    if not ctx.inventory.tcp_ports:
        return
    for lo, ap in _aps(ctx):
        if ap.action is Action.CUSTOM or ap.target_refs:
            continue
        for i, rule in enumerate(ap.rules or ()):
            fields = http_fields(rule)
            if not fields:
                continue
            only, excluded = rule_ports(rule)
            for tp in ctx.inventory.tcp_ports:
                w = tp.workload
                if ap.meta.namespace not in (ctx.root_namespace, w.namespace) or not w.matched_by(ap.selector):
                    continue
                if (only is not None and tp.port not in only) or tp.port in excluded:
                    continue
                path, name = fields[0]
                if ap.action is Action.ALLOW:
                    effect = "on TCP Istio skips this whole ALLOW rule, so it admits nothing there"
                else:
                    effect = (f"on TCP Istio drops the HTTP-only fields, so this {ap.action.value} rule matches "
                              "more TCP traffic than it says")
                yield lo, diag_at(lo.where("rules", i, *path), "W101",
                                  f"rule {i} of {ap.meta.ref} uses HTTP-only `{name}` but applies to TCP port "
                                  f"{tp.port} ({tp.origin}); {effect}")
                break


def deny_http_only(ctx: Context) -> Iterator[Finding]:
    for lo, ap in _aps(ctx):
        if ap.action is not Action.DENY:
            continue
        for i, rule in enumerate(ap.rules or ()):
            fields = http_fields(rule)
            if fields and not has_l4_field(rule):
                names = ", ".join(sorted({n for _, n in fields}))
                yield lo, diag_at(lo.where("rules", i), "W103",
                                  f"DENY rule {i} of {ap.meta.ref} uses only HTTP attributes ({names}); on TCP "
                                  "ports Istio drops them and the rule denies all TCP traffic in its scope; add "
                                  "`ports` to limit it to the HTTP ports")


# --- W102: identities need mTLS ---------------------------------------------------------------

def _candidates(ctx: Context, ap: AuthorizationPolicy) -> list[Workload]:
    known = [Workload(w.namespace, dict(w.labels)) for w in ctx.in_scope(ap.meta.namespace, ap.selector)]
    base = ap.meta.namespace if ap.meta.namespace != ctx.root_namespace else "\x00any"
    return known + [Workload(base, dict(ap.selector or {}))]


def principal_without_mtls(ctx: Context) -> Iterator[Finding]:
    for lo, ap in _aps(ctx):
        if ap.action not in (Action.ALLOW, Action.DENY) or ap.target_refs:
            continue
        for i, rule in enumerate(ap.rules or ()):
            spots: list[tuple[tuple[Any, ...], str]] = []
            for j, src in enumerate(rule.from_ or ()):
                spots += [(("from", j, "source", camel), camel) for camel, py in IDENTITY_SOURCE if getattr(src, py)]
            spots += [(("when", j, "key"), c.key) for j, c in enumerate(rule.when)
                      if c.key in IDENTITY_WHEN and c.values]
            if not spots:
                continue
            only, _ = rule_ports(rule)
            hit = _plaintext_mode(ctx, ap, only)
            if hit is None:
                continue
            workload, port, mode, ref = hit
            labels = ",".join(f"{k}={v}" for k, v in sorted(workload.labels.items()))
            who = ("mesh-wide workloads" if workload.namespace == "\x00any" else f"workloads in {workload.namespace}") \
                + (f" with {labels}" if labels else "")
            why = f"PeerAuthentication {ref.namespace}/{ref.name} is {mode.value}" if ref else \
                "no PeerAuthentication applies (PERMISSIVE by default)"
            on = f" on port {port}" if port is not None else ""
            effect = ("plaintext requests carry no principal and never match this rule" if ap.action is Action.ALLOW
                      else "plaintext requests carry no principal and bypass this DENY rule")
            path, name = spots[0]
            yield lo, diag_at(lo.where("rules", i, *path), "W102",
                              f"rule {i} of {ap.meta.ref} matches on `{name}`, which needs mTLS, but {why} for "
                              f"{who}{on}: {effect}; require STRICT mTLS or match on ipBlocks")


def _plaintext_mode(ctx: Context, ap: AuthorizationPolicy, only: set[int] | None) -> Any:
    for w in _candidates(ctx, ap):
        resolver = ctx.peer(w)
        ports: list[int | None] = sorted(only) if only else [None]
        if not only and resolver.workload is not None:
            ports += [pm.port for pm in resolver.workload.port_level]
        for port in ports:
            mode, ref = resolver.resolve(port)
            if mode is not MtlsMode.STRICT:
                return w, port, mode, ref
    return None


# --- W104: requestPrincipals "*" -------------------------------------------------------------

def request_principal_star(ctx: Context) -> Iterator[Finding]:
    for lo, ap in _aps(ctx):
        for i, rule in enumerate(ap.rules or ()):
            for j, src in enumerate(rule.from_ or ()):
                if "*" in src.request_principals:
                    k = src.request_principals.index("*")
                    yield lo, diag_at(lo.where("rules", i, "from", j, "source", "requestPrincipals", k), "W104",
                                      f'rule {i} of {ap.meta.ref}: requestPrincipals ["*"] only matches tokens whose '
                                      "`iss` and `sub` are both non-empty; tokens without `sub` (client-credential "
                                      "tokens of some issuers) do not match. If any valid token should do, use "
                                      "`when: [{key: request.auth.claims[iss], values: [\"*\"]}]`")
            for j, c in enumerate(rule.when):
                if c.key == "request.auth.principal" and "*" in c.values:
                    yield lo, diag_at(lo.where("rules", i, "when", j, "values", c.values.index("*")), "W104",
                                      f'rule {i} of {ap.meta.ref}: request.auth.principal "*" only matches tokens '
                                      "with a non-empty `sub`")


# --- W105: ALLOW rules a DENY rule always beats ----------------------------------------------

def _cidr_within(a: str, d: str) -> bool:
    try:
        inner, outer = ipaddress.ip_network(a, strict=False), ipaddress.ip_network(d, strict=False)
    except ValueError:
        return False
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _covers(d_vals: tuple[str, ...], a_vals: tuple[str, ...]) -> bool:
    """Every value `a_vals` can match is matched by `d_vals` (exact, `*`, prefix, suffix, CIDR)."""
    def one(a: str) -> bool:
        for d in d_vals:
            if d == a or d == "*":
                return True
            if d.endswith("*") and a.startswith(d[:-1]):
                return True
            if d.startswith("*") and a.endswith(d[1:]):
                return True
            if ("/" in d or "." in d or ":" in d) and d[:1].isalnum() and _cidr_within(a, d):
                return True
        return False
    return bool(a_vals) and all(one(a) for a in a_vals)


def _conj_subsumes(d: Any, a: Any) -> bool:
    for name in d.__slots__:
        if name == "pos":
            continue
        dv, av = getattr(d, name), getattr(a, name)
        if not dv:
            continue
        if name.startswith("not_"):
            if not set(dv) <= set(av):
                return False
        elif not _covers(dv, av):
            return False
    return True


def _clause_subsumes(d: tuple[Any, ...] | None, a: tuple[Any, ...] | None) -> bool:
    if d is None:
        return True
    if a is None:
        return False
    return all(any(_conj_subsumes(dc, ac) for dc in d) for ac in a)


def rule_subsumes(d: Rule, a: Rule) -> bool:
    """Every request rule `a` matches, rule `d` matches too (a sound, syntactic check)."""
    for dc in d.when:
        if dc.not_values or not any(ac.key == dc.key and not ac.not_values and _covers(dc.values, ac.values)
                                    for ac in a.when):
            return False
    return _clause_subsumes(d.from_, a.from_) and _clause_subsumes(d.to, a.to)


def allow_shadowed(ctx: Context) -> Iterator[Finding]:
    denies = [(lo, ap) for lo, ap in _aps(ctx) if ap.action is Action.DENY and not ap.dry_run and not ap.target_refs]
    if not denies:
        return
    for lo, ap in _aps(ctx):
        if ap.action is not Action.ALLOW or ap.dry_run or ap.target_refs:
            continue
        scoped = [(dlo, d) for dlo, d in denies
                  if d.meta.namespace in (ap.meta.namespace, ctx.root_namespace)
                  and (not d.selector or (ap.selector and all(ap.selector.get(k) == v for k, v in d.selector.items())))]
        for i, rule in enumerate(ap.rules or ()):
            for _, d in scoped:
                k = next((k for k, dr in enumerate(d.rules or ()) if rule_subsumes(dr, rule)), None)
                if k is not None:
                    dr = (d.rules or ())[k]
                    yield lo, diag_at(lo.where("rules", i), "W105",
                                      f"ALLOW rule {i} of {ap.meta.ref} never takes effect: every request it "
                                      f"matches is denied first by DENY rule {k} of {d.meta.ref} ({dr.pos})")
                    break


# --- W106 / W107 / W108 ----------------------------------------------------------------------

def selector_matches_nothing(ctx: Context) -> Iterator[Finding]:
    for lo in ctx.objects:
        obj = lo.obj
        sel = getattr(obj, "selector", None)
        if not sel or getattr(obj, "target_refs", ()):
            continue
        ns = obj.meta.namespace
        pool = ctx.inventory.in_namespace(None if ns == ctx.root_namespace else ns)
        if not pool or any(w.matched_by(sel) for w in pool):
            continue
        seen = ", ".join(sorted({",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or "(no labels)"
                                 for w in pool})[:3])
        where = "the mesh" if ns == ctx.root_namespace else f"namespace {ns}"
        yield lo, diag_at(lo.where("selector", "matchLabels"), "W106",
                          f"{type(obj).__name__} {obj.meta.ref}: selector {dict(sel)} matches none of the "
                          f"{len(pool)} workload(s) known in {where} (labels seen: {seen}); check the labels")


def deprecated_v1beta1(ctx: Context) -> Iterator[Finding]:
    for lo in ctx.objects:
        if lo.obj.api_version.endswith("/v1beta1"):
            pos = lo.node.child("apiVersion").pos
            yield lo, diag_at(pos, "W107", f"{type(lo.obj).__name__} {lo.obj.meta.ref} uses deprecated "
                                           f"{lo.obj.api_version}; use security.istio.io/v1 (same schema)")


def not_enforced(ctx: Context) -> Iterator[Finding]:
    for lo in ctx.objects:
        obj = lo.obj
        if isinstance(obj, (AuthorizationPolicy, RequestAuthentication)) and obj.target_refs:
            yield lo, diag_at(lo.where("targetRefs") if "targetRefs" in lo.spec.value else lo.where("targetRef"),
                              "W108", f"{obj.meta.ref} attaches with targetRefs (gateways, waypoints); secmesh "
                                      "sidecars ignore it")
        if not isinstance(obj, AuthorizationPolicy):
            continue
        if obj.action is Action.CUSTOM:
            yield lo, diag_at(lo.where("action"), "W108",
                              f"{obj.meta.ref} uses action CUSTOM (provider {obj.provider!r}); secmesh sidecars do "
                              "not call external authorizers and refuse to start with it (fail closed)")
        for i, rule in enumerate(obj.rules or ()):
            for j, c in enumerate(rule.when):
                if c.key.startswith("experimental.envoy.filters."):
                    yield lo, diag_at(lo.where("rules", i, "when", j, "key"), "W108",
                                      f"`{c.key}` reads Envoy filter metadata, which secmesh does not have; "
                                      "policies using it are refused")


CHECKS: tuple[Callable[[Context], Iterable[Finding]], ...] = (
    http_on_tcp, principal_without_mtls, deny_http_only, request_principal_star, allow_shadowed,
    selector_matches_nothing, deprecated_v1beta1, not_enforced)
