"""Istio's own validation of security resources, so that what Istio rejects we reject too.

Transcribed from the rules of Istio's admission webhook (`ValidateAuthorizationPolicy`,
`ValidatePeerAuthentication`, `ValidateRequestAuthentication` and the `security` helpers):
messages keep Istio's wording so users can search for them. Each error points at the
offending value (`file:line:col`) through the YAML node it came from, and carries a
`reason` that `policy lint` maps to a documented code (see `lintcodes.py`). Problems are
`report`ed, not raised: the loader stops at the first (fail closed), the linter collects all.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterable

from secmesh.policy.pathmatch import template_error
from secmesh.policy.model import Action, AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from secmesh.policy.yamlsrc import Node, report

MAX_RULES = 512
HTTP_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

KNOWN_EXACT_KEYS = {"source.ip", "remote.ip", "source.namespace", "source.serviceAccount", "source.principal",
                    "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "destination.ip",
                    "destination.port", "connection.sni"}
MAP_KEY_PREFIXES = ("request.headers", "request.experimental.inline.headers", "request.auth.claims",
                    "experimental.envoy.filters.")


def at(node: Node, *path: Any) -> Node:
    """Navigate to a sub-node for its position; stop at the deepest part that exists."""
    cur = node
    for step in path:
        v = cur.value
        if isinstance(step, int):
            if not cur.is_seq() or step >= len(v):
                return cur
            cur = list(cur.items())[step]
        else:
            if not cur.is_map() or step not in v:
                return cur
            cur = cur.child(step)
    return cur


def workload_selector(node: Node, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        where = at(node, "matchLabels", key)
        if key == "" or "*" in key or "*" in value:
            report(where.error("wildcard is not supported in selector" if "*" in key + value
                               else "empty key is not supported in selector", reason="selector"))
            continue
        prefix, _, name = key.rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not name or not _LABEL_NAME.match(name):
            report(where.error(f"invalid label key {key!r}", reason="selector"))
        if len(value) > 63 or not _LABEL_NAME.match(value):
            report(where.error(f"invalid label value {value!r}", reason="selector"))


def _nonempty(node: Node, path: tuple[Any, ...], field: str, values: Iterable[str]) -> None:
    for k, v in enumerate(values):
        if v == "":
            report(at(node, *path, k).error(f"empty value not allowed, found in {field}", reason="empty_value"))


def _ips(node: Node, path: tuple[Any, ...], values: Iterable[str]) -> None:
    for k, v in enumerate(values):
        try:
            if "/" in v:
                ipaddress.ip_network(v, strict=False)
            else:
                ipaddress.ip_address(v)
        except ValueError:
            kind = "CIDR range" if "/" in v else "IP address"
            report(at(node, *path, k).error(f"bad {kind} ({v})", reason="ip"))


def _ports(node: Node, path: tuple[Any, ...], values: Iterable[str]) -> None:
    for k, v in enumerate(values):
        if not v.isdigit() or not v.isascii() or int(v) > 65535:
            report(at(node, *path, k).error(f"bad port ({v})", reason="port"))


def _service_accounts(node: Node, path: tuple[Any, ...], field: str, values: tuple[str, ...]) -> None:
    if len(values) > 16:
        report(at(node, *path).error("may not have more than 16 values", reason="too_many"))
    for k, v in enumerate(values):
        where = at(node, *path, k)
        if v == "":
            report(where.error(f"empty value not allowed, found in {field}", reason="empty_value"))
            continue
        if "*" in v:
            report(where.error(f"wildcard not allowed, found in {field}", reason="service_account"))
            continue
        ns, slash, sa = v.partition("/")
        if v.count("/") > 1 or (slash and (not ns or not sa)):
            report(where.error(f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {v!r} in "
                               f"{field}", reason="service_account"))
        elif len(v) > 320:
            report(where.error(f"value cannot exceed 320 characters, found {v!r} in {field}",
                               reason="service_account"))


def _map_key(key: str) -> bool:
    open_ = key.find("[")
    return key.endswith("]") and 0 < open_ < len(key) - 2


def attribute_error(key: str, values: tuple[str, ...]) -> str | None:
    """Istio's `ValidateAttribute`: None when the key and its values are acceptable."""
    if any(v == "" for v in values):
        return f"empty value not allowed, found in {key}"
    if key.startswith(MAP_KEY_PREFIXES):
        return None if _map_key(key) else f"bad key ({key}): should have format a[b]"
    if key in ("source.ip", "remote.ip", "destination.ip"):
        for v in values:
            try:
                ipaddress.ip_network(v, strict=False) if "/" in v else ipaddress.ip_address(v)
            except ValueError:
                return f"bad {'CIDR range' if '/' in v else 'IP address'} ({v})"
        return None
    if key == "destination.port":
        bad = [v for v in values if not (v.isdigit() and v.isascii() and int(v) <= 65535)]
        return f"bad port ({bad[0]})" if bad else None
    if key == "source.serviceAccount":
        for v in values:
            ns, slash, sa = v.partition("/")
            if "*" in v or v.count("/") > 1 or (slash and (not ns or not sa)):
                return f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {v!r}"
        return None
    if key in KNOWN_EXACT_KEYS:
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


def authorization_policy(ap: AuthorizationPolicy, spec: Node) -> None:
    if ap.selector is not None and ap.target_refs:
        report(spec.error("only one of targetRefs or workloadSelector can be set", reason="conflict"))
    if ap.action is Action.CUSTOM:
        if ap.rules is None:
            report(at(spec, "action").error(
                "CUSTOM action without `rules` is meaningless as it will never be triggered, "
                "add an empty rule `{}` if you want it be triggered for every request", reason="rules_required"))
        if not ap.provider:
            report(at(spec, "provider").error("`provider.name` must not be empty", reason="custom_provider"))
    elif ap.provider is not None:
        report(at(spec, "provider").error(f"`provider` must not be with non CUSTOM action, found {ap.action.value}",
                                          reason="custom_provider"))
    if ap.action is Action.DENY and ap.rules is None:
        report(at(spec, "action").error(
            "DENY action without `rules` is meaningless as it will never be triggered, "
            "add an empty rule `{}` if you want it be triggered for every request", reason="rules_required"))
    rules = ap.rules or ()
    if len(rules) > MAX_RULES:
        report(at(spec, "rules").error(f"must have at most {MAX_RULES} rules", reason="too_many"))
    for i, rule in enumerate(rules):
        for j, src in enumerate(rule.from_ or ()):
            base = ("rules", i, "from", j, "source")
            where = at(spec, *base)
            lists = {name: getattr(src, name) for name in src.__slots__ if name != "pos"}
            if not any(lists.values()):
                report(where.error(f"`from.source` must not be empty, found at rule {i}", reason="empty_value"))
            if (src.principals or src.not_principals or src.namespaces or src.not_namespaces) and \
                    (src.service_accounts or src.not_service_accounts):
                report(where.error(f"cannot set serviceAccounts with namespaces or principals, found at rule {i}",
                                   reason="conflict"))
            for name, camel in (("ip_blocks", "ipBlocks"), ("not_ip_blocks", "notIpBlocks"),
                                ("remote_ip_blocks", "remoteIpBlocks"), ("not_remote_ip_blocks", "notRemoteIpBlocks")):
                _nonempty(spec, base + (camel,), camel, lists[name])
                _ips(spec, base + (camel,), lists[name])
            for camel in ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                          "notNamespaces", "trustDomains", "notTrustDomains"):
                py = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
                _nonempty(spec, base + (camel,), camel[0].upper() + camel[1:], lists[py])
            _service_accounts(spec, base + ("serviceAccounts",), "ServiceAccounts", src.service_accounts)
            _service_accounts(spec, base + ("notServiceAccounts",), "NotServiceAccounts", src.not_service_accounts)
            if ap.action is Action.CUSTOM:
                for name in ("namespaces", "not_namespaces", "service_accounts", "not_service_accounts",
                             "principals", "not_principals", "request_principals", "not_request_principals"):
                    if lists[name]:
                        report(where.error(f"From.{name} is currently not supported with CUSTOM action",
                                           reason="custom_field"))
        for j, op in enumerate(rule.to or ()):
            base = ("rules", i, "to", j, "operation")
            if not any((op.hosts, op.not_hosts, op.ports, op.not_ports, op.methods, op.not_methods, op.paths,
                        op.not_paths)):
                report(at(spec, *base).error(f"`to.operation` must not be empty, found at rule {i}",
                                            reason="empty_value"))
            for camel, values in (("hosts", op.hosts), ("notHosts", op.not_hosts), ("ports", op.ports),
                                  ("notPorts", op.not_ports), ("methods", op.methods), ("notMethods", op.not_methods),
                                  ("paths", op.paths), ("notPaths", op.not_paths)):
                _nonempty(spec, base + (camel,), camel[0].upper() + camel[1:], values)
            _ports(spec, base + ("ports",), op.ports)
            _ports(spec, base + ("notPorts",), op.not_ports)
            for camel, values in (("paths", op.paths), ("notPaths", op.not_paths)):
                for k, p in enumerate(values):
                    problem = template_error(p)
                    if problem:
                        report(at(spec, *base, camel, k).error(f"invalid or unsupported path {p}: {problem}",
                                                               reason="path"))
        for j, cond in enumerate(rule.when):
            where = at(spec, "rules", i, "when", j)
            if cond.key == "":
                report(where.error("`key` must not be empty", reason="condition"))
                continue
            if not cond.values and not cond.not_values:
                report(where.error(f"at least one of `values` or `notValues` must be set for key {cond.key}",
                                   reason="condition"))
            for field, values in (("values", cond.values), ("notValues", cond.not_values)):
                problem = attribute_error(cond.key, values) if values else None
                if problem:
                    name = "value" if field == "values" else "notValue"
                    bad = [k for k, v in enumerate(values) if attribute_error(cond.key, (v,)) == problem]
                    node = at(where, field, bad[0]) if bad else at(where, field)
                    report(node.error(f"invalid `{name}` for `key` {cond.key}: {problem}", reason="condition"))
            if ap.action is Action.CUSTOM and (cond.key in ("source.namespace", "source.serviceAccount",
                                                            "source.principal") or
                                               cond.key.startswith("request.auth.")):
                report(where.error(f"{cond.key} is currently not supported with CUSTOM action", reason="custom_field"))


def peer_authentication(pa: PeerAuthentication, spec: Node) -> None:
    if not pa.selector and pa.port_level:
        report(at(spec, "portLevelMtls").error("mesh/namespace peer authentication cannot have port level mTLS",
                                               reason="port_level"))
    if "portLevelMtls" in spec.value and spec.value["portLevelMtls"] is not None and not pa.port_level:
        report(at(spec, "portLevelMtls").error("port level mTLS, if defined, must have at least one element",
                                               reason="port_level"))


def request_authentication(ra: RequestAuthentication, spec: Node) -> None:
    if ra.selector is not None and ra.target_refs:
        report(spec.error("only one of targetRefs or workloadSelector can be set", reason="conflict"))
    if len(ra.jwt_rules) > 4096:
        report(at(spec, "jwtRules").error("must have at most 4096 rules", reason="too_many"))
    for i, rule in enumerate(ra.jwt_rules):
        where = at(spec, "jwtRules", i)
        for k, aud in enumerate(rule.audiences):
            if aud == "":
                report(at(where, "audiences", k).error("audience must be non-empty string", reason="jwt"))
        if not rule.issuer and not rule.jwks_uri:
            report(where.error("issuer or jwksUri must be non-empty string", reason="jwt"))
        if rule.jwks_uri and not re.match(r"^https?://[^/?#]+", rule.jwks_uri):
            scheme = rule.jwks_uri.partition("://")[0] if "://" in rule.jwks_uri else ""
            report(at(where, "jwksUri").error(f"URI scheme {scheme!r} is not supported", reason="jwt"))
        if rule.jwks:
            problem = jwks_error(rule.jwks)
            if problem:
                report(at(where, "jwks").error(f"jwks parse error: {problem}", reason="jwt"))
        for k, h in enumerate(rule.from_headers):
            if not h.name:
                report(at(where, "fromHeaders", k).error("location header name must be non-empty string", reason="jwt"))
        for k, p in enumerate(rule.from_params):
            if not p:
                report(at(where, "fromParams", k).error("location query must be non-empty string", reason="jwt"))
        for k, c in enumerate(rule.from_cookies):
            if not c:
                report(at(where, "fromCookies", k).error("cookie name must be non-empty string", reason="jwt"))
        for k, ch in enumerate(rule.output_claim_to_headers):
            if not ch.claim or not ch.header:
                report(at(where, "outputClaimToHeaders", k).error(
                    "outputClaimToHeaders header and claim value must be non-empty string", reason="jwt"))
            elif not HTTP_HEADER_NAME.match(ch.header):
                report(at(where, "outputClaimToHeaders", k, "header").error(
                    f"invalid HTTP header name {ch.header!r}", reason="jwt"))


def jwks_error(text: str) -> str | None:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {exc}"
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and keys is None and "kty" in doc:
        keys = [doc]
    if not isinstance(keys, list) or not keys:
        return "expected a JWK set with a non-empty `keys` list"
    for key in keys:
        if not isinstance(key, dict) or "kty" not in key:
            return "every key needs `kty`"
    return None
