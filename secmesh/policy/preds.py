"""Istio fields and `when` keys → `Pred`s (one per field value list and one per not-list).

Which attribute each field reads and how its strings match is decided here, once per
distinct (field, values) pair: identical lists across thousands of rules share one
compiled predicate (the cache is per compilation).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable

from secmesh.errors import PolicyError
from secmesh.policy import matchers as m
from secmesh.policy.attrs import claim_at
from secmesh.policy.pathmatch import path_matcher
from secmesh.policy.model import Condition, Operation, Source


class UnsupportedPolicy(PolicyError):
    """A policy secmesh cannot enforce (CUSTOM, Envoy metadata keys): fail closed, exit 2."""

    reason = "unsupported"


class PredCache:
    def __init__(self) -> None:
        self.preds: dict[tuple[Any, ...], list[m.Pred]] = {}


def _pair(key: str, getter: Callable[[Any], Any], built: tuple[Callable[[Any], bool], Any], values: tuple[str, ...],
          negated: bool, label: str) -> m.Pred:
    test, anchors = built
    fn = (lambda a: test(getter(a)))
    if negated:
        fn = m.negate(fn)
        anchors = None
    return m.Pred(key, fn, anchors, f"{label}{list(values)}")


_CACHE: PredCache | None = None


def _field_preds(key: str, getter: Callable[[Any], Any], make: Callable[[tuple[str, ...]], Any],
                 values: tuple[str, ...], not_values: tuple[str, ...], label: str, extra: Any = None) -> list[m.Pred]:
    if not values and not not_values:
        return []
    ck = (label, values, not_values, extra)
    cache = _CACHE.preds if _CACHE is not None else None
    if cache is not None and ck in cache:
        return cache[ck]
    out = []
    if values:
        out.append(_pair(key, getter, make(values), values, False, label))
    if not_values:
        out.append(_pair(key, getter, make(not_values), not_values, True, "not " + label))
    if cache is not None:
        cache[ck] = out
    return out


def use_cache(cache: PredCache | None) -> None:
    """Share predicates across one compilation (not thread-safe; compilation is single-threaded)."""
    global _CACHE
    _CACHE = cache


# Attribute getters are C-level (operator.attrgetter): a predicate is one Python frame.
_principal = attrgetter("principal")
_claims = attrgetter("claims")
_source_ip, _remote_ip, _dest_ip = attrgetter("source_ip"), attrgetter("remote_ip"), attrgetter("dest_ip")
_dest_port, _sni, _td = attrgetter("dest_port"), attrgetter("sni"), attrgetter("trust_domain")
_host, _method, _path = attrgetter("host"), attrgetter("method"), attrgetter("path")


def source_preds(s: Source, policy_ns: str) -> tuple[m.Pred, ...]:
    preds: list[m.Pred] = []
    preds += _field_preds("source.ip", _source_ip, lambda v: m.cidr_matcher(v, "src_ip"),
                          s.ip_blocks, s.not_ip_blocks, "ipBlocks")
    preds += _field_preds("remote.ip", _remote_ip, lambda v: m.cidr_matcher(v, "remote_ip"),
                          s.remote_ip_blocks, s.not_remote_ip_blocks, "remoteIpBlocks")
    preds += _field_preds("source.namespace", _principal, m.namespace_matcher, s.namespaces, s.not_namespaces,
                          "namespaces")
    preds += _field_preds("source.serviceAccount", _principal,
                          lambda v: m.service_account_matcher(v, policy_ns), s.service_accounts,
                          s.not_service_accounts, "serviceAccounts", policy_ns)
    preds += _field_preds("source.trustDomain", _td, m.trust_domain_matcher, s.trust_domains,
                          s.not_trust_domains, "trustDomains")
    preds += _field_preds("request.principal", _claims, m.request_principal_matcher, s.request_principals,
                          s.not_request_principals, "requestPrincipals")
    preds += _field_preds("source.principal", _principal, m.principal_matcher, s.principals, s.not_principals,
                          "principals")
    return tuple(preds)


def operation_preds(o: Operation) -> tuple[m.Pred, ...]:
    preds: list[m.Pred] = []
    preds += _field_preds("request.host", _host,
                          lambda v: m.string_matcher(v, mode="header", anchor="host", lower=True),
                          o.hosts, o.not_hosts, "hosts")
    preds += _field_preds("request.method", _method,
                          lambda v: m.string_matcher(v, mode="header", anchor="method"), o.methods, o.not_methods,
                          "methods")
    preds += _field_preds("request.path", _path, path_matcher, o.paths, o.not_paths, "paths")
    preds += _field_preds("destination.port", _dest_port, m.port_matcher, o.ports, o.not_ports, "ports")
    return tuple(preds)


def _header_matcher(name: str) -> Callable[[tuple[str, ...]], Any]:
    def make(values: tuple[str, ...]) -> Any:
        test, anchors = m.string_matcher(values, mode="header", anchor="header")
        if anchors is not None:
            if any(kind != "header" for kind, _ in anchors):
                anchors = None
            else:
                anchors = tuple(("header", (name, v)) for _, v in anchors)
        return test, anchors
    return make


def condition_preds(c: Condition, policy_ns: str) -> list[m.Pred]:
    k, v, nv = c.key, c.values, c.not_values
    if k == "source.ip":
        return _field_preds(k, _source_ip, lambda x: m.cidr_matcher(x, "src_ip"), v, nv, k)
    if k == "remote.ip":
        return _field_preds(k, _remote_ip, lambda x: m.cidr_matcher(x, "remote_ip"), v, nv, k)
    if k == "destination.ip":
        return _field_preds(k, _dest_ip, lambda x: m.cidr_matcher(x, "dest_ip"), v, nv, k)
    if k == "destination.port":
        return _field_preds(k, _dest_port, m.port_matcher, v, nv, k)
    if k == "connection.sni":
        return _field_preds(k, _sni, lambda x: m.string_matcher(x, anchor="sni"), v, nv, k)
    if k == "source.namespace":
        return _field_preds(k, _principal, m.namespace_matcher, v, nv, k)
    if k == "source.serviceAccount":
        return _field_preds(k, _principal, lambda x: m.service_account_matcher(x, policy_ns), v, nv, k, policy_ns)
    if k == "source.principal":
        return _field_preds(k, _principal, m.principal_matcher, v, nv, k)
    if k == "source.trustDomain":
        return _field_preds(k, _td, m.trust_domain_matcher, v, nv, k)
    if k == "request.auth.principal":
        return _field_preds("request.principal", _claims, m.request_principal_matcher, v, nv, k)
    if k in ("request.auth.audiences", "request.auth.presenter"):
        claim = "aud" if k.endswith("audiences") else "azp"
        get = (lambda q, claim=claim: q.claims.get(claim) if q.claims else None)
        return _field_preds("request.claims", get, lambda x: (m.claim_matcher(x), None), v, nv, k)
    if k.startswith("request.auth.claims"):
        path = m.claim_path(k)
        return _field_preds("request.claims", lambda q: claim_at(q.claims, path), lambda x: (m.claim_matcher(x), None),
                            v, nv, k)
    if k.startswith(("request.headers[", "request.experimental.inline.headers[")):
        name = m.header_name(k)
        return _field_preds("request.header", lambda q: q.headers.get(name), _header_matcher(name), v, nv, k)
    raise UnsupportedPolicy(f"condition key {k!r} is not supported by secmesh", location=str(c.pos), field="when.key")
