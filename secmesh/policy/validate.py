"""Istio's own validation of security resources, so that what Istio rejects we reject too.

Transcribed from the rules of Istio's admission webhook (`ValidateAuthorizationPolicy`,
`ValidatePeerAuthentication`, `ValidateRequestAuthentication` and the `security` helpers):
messages keep Istio's wording so users can search for them. Each error points at the
offending value (`file:line:col`) through the YAML node it came from.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterable

from secmesh.policy.pathmatch import template_error
from secmesh.policy.model import Action, AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from secmesh.policy.yamlsrc import Node

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
            raise where.error("wildcard is not supported in selector" if "*" in key + value
                              else "empty key is not supported in selector")
        prefix, _, name = key.rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not name or not _LABEL_NAME.match(name):
            raise where.error(f"invalid label key {key!r}")
        if len(value) > 63 or not _LABEL_NAME.match(value):
            raise where.error(f"invalid label value {value!r}")


def _nonempty(node: Node, path: tuple[Any, ...], field: str, values: Iterable[str]) -> None:
    for k, v in enumerate(values):
        if v == "":
            raise at(node, *path, k).error(f"empty value not allowed, found in {field}")


def _ips(node: Node, path: tuple[Any, ...], values: Iterable[str]) -> None:
    for k, v in enumerate(values):
        try:
            if "/" in v:
                ipaddress.ip_network(v, strict=False)
            else:
                ipaddress.ip_address(v)
        except ValueError:
            kind = "CIDR range" if "/" in v else "IP address"
            raise at(node, *path, k).error(f"bad {kind} ({v})") from None


def _ports(node: Node, path: tuple[Any, ...], values: Iterable[str]) -> None:
    for k, v in enumerate(values):
        if not v.isdigit() or not v.isascii() or int(v) > 65535:
            raise at(node, *path, k).error(f"bad port ({v})")


def _service_accounts(node: Node, path: tuple[Any, ...], field: str, values: tuple[str, ...]) -> None:
    if len(values) > 16:
        raise at(node, *path).error("may not have more than 16 values")
    for k, v in enumerate(values):
        where = at(node, *path, k)
        if v == "":
            raise where.error(f"empty value not allowed, found in {field}")
        if "*" in v:
            raise where.error(f"wildcard not allowed, found in {field}")
        ns, slash, sa = v.partition("/")
        if v.count("/") > 1 or (slash and (not ns or not sa)):
            raise where.error(f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {v!r} in {field}")
        if len(v) > 320:
            raise where.error(f"value cannot exceed 320 characters, found {v!r} in {field}")


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
        raise spec.error("only one of targetRefs or workloadSelector can be set")
    if ap.action is Action.CUSTOM:
        if ap.rules is None:
            raise spec.error("CUSTOM action without `rules` is meaningless as it will never be triggered, "
                             "add an empty rule `{}` if you want it be triggered for every request")
        if not ap.provider:
            raise at(spec, "provider").error("`provider.name` must not be empty")
    elif ap.provider is not None:
        raise at(spec, "provider").error(f"`provider` must not be with non CUSTOM action, found {ap.action.value}")
    if ap.action is Action.DENY and ap.rules is None:
        raise spec.error("DENY action without `rules` is meaningless as it will never be triggered, "
                         "add an empty rule `{}` if you want it be triggered for every request")
    rules = ap.rules or ()
    if len(rules) > MAX_RULES:
        raise at(spec, "rules").error(f"must have at most {MAX_RULES} rules")
    for i, rule in enumerate(rules):
        for j, src in enumerate(rule.from_ or ()):
            base = ("rules", i, "from", j, "source")
            where = at(spec, *base)
            lists = {name: getattr(src, name) for name in src.__slots__ if name != "pos"}
            if not any(lists.values()):
                raise where.error(f"`from.source` must not be empty, found at rule {i}")
            if (src.principals or src.not_principals or src.namespaces or src.not_namespaces) and \
                    (src.service_accounts or src.not_service_accounts):
                raise where.error(f"cannot set serviceAccounts with namespaces or principals, found at rule {i}")
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
                        raise where.error(f"From.{name} is currently not supported with CUSTOM action")
        for j, op in enumerate(rule.to or ()):
            base = ("rules", i, "to", j, "operation")
            if not any((op.hosts, op.not_hosts, op.ports, op.not_ports, op.methods, op.not_methods, op.paths,
                        op.not_paths)):
                raise at(spec, *base).error(f"`to.operation` must not be empty, found at rule {i}")
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
                        raise at(spec, *base, camel, k).error(f"invalid or unsupported path {p}: {problem}")
        for j, cond in enumerate(rule.when):
            where = at(spec, "rules", i, "when", j)
            if cond.key == "":
                raise where.error("`key` must not be empty")
            if not cond.values and not cond.not_values:
                raise where.error(f"at least one of `values` or `notValues` must be set for key {cond.key}")
            for field, values in (("values", cond.values), ("notValues", cond.not_values)):
                problem = attribute_error(cond.key, values) if values else None
                if problem:
                    name = "value" if field == "values" else "notValue"
                    bad = [k for k, v in enumerate(values) if attribute_error(cond.key, (v,)) == problem]
                    node = at(where, field, bad[0]) if bad else at(where, field)
                    raise node.error(f"invalid `{name}` for `key` {cond.key}: {problem}")
            if ap.action is Action.CUSTOM and (cond.key in ("source.namespace", "source.serviceAccount",
                                                            "source.principal") or
                                               cond.key.startswith("request.auth.")):
                raise where.error(f"{cond.key} is currently not supported with CUSTOM action")


def peer_authentication(pa: PeerAuthentication, spec: Node) -> None:
    if not pa.selector and pa.port_level:
        raise at(spec, "portLevelMtls").error("mesh/namespace peer authentication cannot have port level mTLS")
    if "portLevelMtls" in spec.value and spec.value["portLevelMtls"] is not None and not pa.port_level:
        raise at(spec, "portLevelMtls").error("port level mTLS, if defined, must have at least one element")


def request_authentication(ra: RequestAuthentication, spec: Node) -> None:
    if ra.selector is not None and ra.target_refs:
        raise spec.error("only one of targetRefs or workloadSelector can be set")
    if len(ra.jwt_rules) > 4096:
        raise at(spec, "jwtRules").error("must have at most 4096 rules")
    for i, rule in enumerate(ra.jwt_rules):
        where = at(spec, "jwtRules", i)
        for k, aud in enumerate(rule.audiences):
            if aud == "":
                raise at(where, "audiences", k).error("audience must be non-empty string")
        if not rule.issuer and not rule.jwks_uri:
            raise where.error("issuer or jwksUri must be non-empty string")
        if rule.jwks_uri and not re.match(r"^https?://[^/?#]+", rule.jwks_uri):
            scheme = rule.jwks_uri.partition("://")[0] if "://" in rule.jwks_uri else ""
            raise at(where, "jwksUri").error(f"URI scheme {scheme!r} is not supported")
        if rule.jwks:
            problem = jwks_error(rule.jwks)
            if problem:
                raise at(where, "jwks").error(f"jwks parse error: {problem}")
        for k, h in enumerate(rule.from_headers):
            if not h.name:
                raise at(where, "fromHeaders", k).error("location header name must be non-empty string")
        for k, p in enumerate(rule.from_params):
            if not p:
                raise at(where, "fromParams", k).error("location query must be non-empty string")
        for k, c in enumerate(rule.from_cookies):
            if not c:
                raise at(where, "fromCookies", k).error("cookie name must be non-empty string")
        for k, ch in enumerate(rule.output_claim_to_headers):
            if not ch.claim or not ch.header:
                raise at(where, "outputClaimToHeaders", k).error(
                    "outputClaimToHeaders header and claim value must be non-empty string")
            if not HTTP_HEADER_NAME.match(ch.header):
                raise at(where, "outputClaimToHeaders", k, "header").error(f"invalid HTTP header name {ch.header!r}")


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
