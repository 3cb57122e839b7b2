"""YAML documents → the policy model, strictly: every error names `file:line:col` and the field.

Strict the way the Kubernetes API server plus Istio's webhook are: unknown fields (with a
did-you-mean), wrong types, duplicate keys and non-standard tags are errors, and so is
everything `validate.py` checks. Documents of other kinds (a Deployment in the same
stream) are skipped and remembered in `PolicySet.skipped`, never reported as errors.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from secmesh.errors import PolicyError
from secmesh.policy import validate
from secmesh.policy.fields import _bool, _enum, _fields, _list_of, _opt, _str, _str_list, _str_map, _type_name
from secmesh.policy.model import (Action, AuthorizationPolicy, ClaimToHeader, Condition, JwtHeader, JwtRule, Meta,
                                  MtlsMode, Operation, PeerAuthentication, PolicySet, PortMtls, RequestAuthentication,
                                  Rule, Source, TargetRef)
from secmesh.policy.yamlsrc import Document, Node, load_documents, parse_stream, report

GROUP = "security.istio.io"
VERSIONS = ("v1", "v1beta1")
KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
DEFAULT_NAMESPACE = "default"

_TOP = ("apiVersion", "kind", "metadata", "spec", "status")
_META = ("name", "namespace", "labels", "annotations", "creationTimestamp", "uid", "resourceVersion", "generation",
         "managedFields", "finalizers", "ownerReferences", "generateName", "deletionTimestamp",
         "deletionGracePeriodSeconds", "selfLink")
_SOURCE = {"principals": "principals", "notPrincipals": "not_principals", "requestPrincipals": "request_principals",
           "notRequestPrincipals": "not_request_principals", "namespaces": "namespaces",
           "notNamespaces": "not_namespaces", "ipBlocks": "ip_blocks", "notIpBlocks": "not_ip_blocks",
           "remoteIpBlocks": "remote_ip_blocks", "notRemoteIpBlocks": "not_remote_ip_blocks",
           "serviceAccounts": "service_accounts", "notServiceAccounts": "not_service_accounts",
           "trustDomains": "trust_domains", "notTrustDomains": "not_trust_domains"}
_OPERATION = {"hosts": "hosts", "notHosts": "not_hosts", "ports": "ports", "notPorts": "not_ports",
              "methods": "methods", "notMethods": "not_methods", "paths": "paths", "notPaths": "not_paths"}
_DURATION = re.compile(r"^(\d+(?:\.\d{1,9})?)s$")


def load_policies(path: str | Path) -> PolicySet:
    """Load every security document below `path` (a file or a directory)."""
    return documents_to_policies(load_documents(path))


def load_tree(paths: Iterable[str | Path]) -> PolicySet:
    """The CI tools' loader: several paths, strictly; documents that are not Kubernetes objects
    (a mapping without apiVersion/kind, a stray list) are errors here, not skipped."""
    docs: list[Document] = []
    for p in paths:
        docs.extend(load_documents(p))
    return documents_to_policies(docs, require_objects=True)


def loads_policies(text: str, filename: str = "<string>") -> PolicySet:
    return documents_to_policies(parse_stream(text, filename))


def documents_to_policies(docs: Iterable[Document], require_objects: bool = False) -> PolicySet:
    aps: list[AuthorizationPolicy] = []
    pas: list[PeerAuthentication] = []
    ras: list[RequestAuthentication] = []
    skipped: list[tuple[str, Any]] = []
    order = 0
    for doc in docs:
        for node in expand_lists(doc_node(doc)):
            if require_objects and not is_object(node) and node.value.get("kind") not in KINDS:
                missing = " and ".join(k for k in ("apiVersion", "kind") if not isinstance(node.value.get(k), str))
                raise node.error(f"not a Kubernetes object: missing or non-string {missing}", reason="not_object")
            kind = kind_of(node)
            if kind is None:
                skipped.append((_scalar_or(node, "kind", "?"), node.pos))
                continue
            order += 1
            obj = parse_object(kind, node, order)
            (aps if kind == KINDS[0] else pas if kind == KINDS[1] else ras).append(obj)
    return PolicySet(tuple(aps), tuple(pas), tuple(ras), tuple(skipped))


def policy_set(objects: Iterable[Any], skipped: Iterable[tuple[str, Any]] = ()) -> PolicySet:
    """Objects parsed one by one (the linter's way) → a PolicySet, in the order given."""
    objs = list(objects)
    return PolicySet(tuple(o for o in objs if isinstance(o, AuthorizationPolicy)),
                     tuple(o for o in objs if isinstance(o, PeerAuthentication)),
                     tuple(o for o in objs if isinstance(o, RequestAuthentication)), tuple(skipped))


def doc_node(doc: Document) -> Node:
    return Node(doc.data, doc.file, doc.pos, "")


def parse_object(kind: str, node: Node, order: int) -> Any:
    """One security object (`kind` from `kind_of`) → its model; raises PolicyError."""
    return _PARSERS[kind](node, order)


def is_object(node: Node) -> bool:
    """A Kubernetes object has string `apiVersion` and `kind` (anything else is not one)."""
    return node.is_map() and isinstance(node.value.get("apiVersion"), str) and isinstance(node.value.get("kind"), str)


def expand_lists(node: Node) -> Iterable[Node]:
    """A `kind: List` (what `kubectl get -o yaml` prints) contributes its items."""
    if not node.is_map():
        raise node.error(f"a document must be a mapping (a Kubernetes object), found {_type_name(node.value)}",
                         reason="not_object")
    if node.value.get("kind") == "List" and "items" in node.value:
        items = node.child("items")
        if not items.is_seq():
            raise items.error("must be a list", reason="type")
        for item in items.items():
            yield from expand_lists(item)
    else:
        yield node


def _scalar_or(node: Node, key: str, default: str) -> str:
    v = node.value.get(key)
    return v if isinstance(v, str) else default


def kind_of(node: Node) -> str | None:
    """Our kind, None for foreign documents; errors only for our group with a bad version."""
    api = node.value.get("apiVersion")
    kind = node.value.get("kind")
    if not isinstance(api, str) or not isinstance(kind, str):
        if "apiVersion" not in node.value and kind in KINDS:
            raise node.error(f"{kind} without apiVersion (expected {GROUP}/v1)", reason="api_version")
        return None
    group, _, version = api.rpartition("/")
    if group != GROUP:
        return None
    if kind not in KINDS:
        return None
    if version not in VERSIONS:
        raise node.child("apiVersion").error(
            f"unsupported version {api!r} for {kind}; use {GROUP}/v1 or {GROUP}/v1beta1", reason="api_version")
    return kind


# --- metadata and kinds -----------------------------------------------------------------

def _meta(node: Node, order: int) -> tuple[Meta, Node]:
    _fields(node, _TOP, node.value.get("kind", "object"))
    md = _opt(node, "metadata")
    if md is None:
        raise node.error("metadata.name is required", reason="required")
    _fields(md, _META, "metadata")
    name_node = _opt(md, "name")
    if name_node is None:
        raise md.error("name is required", reason="required")
    ns_node = _opt(md, "namespace")
    ts_node = _opt(md, "creationTimestamp")
    ts: str | None = None
    if ts_node is not None:
        raw = ts_node.scalar()
        if isinstance(raw, _dt.datetime):
            ts = (raw if raw.tzinfo else raw.replace(tzinfo=_dt.timezone.utc)).isoformat()
        elif isinstance(raw, str):
            ts = raw
        else:
            raise ts_node.error(f"must be an RFC 3339 timestamp, found {_type_name(raw)}", reason="type")
    meta = Meta(name=_str(name_node), namespace=_str(ns_node) if ns_node else DEFAULT_NAMESPACE,
                labels=_str_map(_opt(md, "labels")), annotations=_str_map(_opt(md, "annotations")),
                creation_timestamp=ts, pos=node.pos, order=order)
    spec = _opt(node, "spec")
    if spec is None:
        spec = Node(_empty_map(), node.file, node.pos, "spec")
    return meta, spec


def _empty_map() -> Any:
    from ruamel.yaml.comments import CommentedMap
    m = CommentedMap()
    m._yaml_set_line_col(0, 0)
    return m


def _selector(spec: Node) -> dict[str, str] | None:
    sel = _opt(spec, "selector")
    if sel is None:
        return None
    _fields(sel, ("matchLabels",), "WorkloadSelector")
    labels = _str_map(_opt(sel, "matchLabels"))
    validate.workload_selector(sel, labels)
    return labels


def _target_ref(node: Node) -> TargetRef:
    _fields(node, ("group", "kind", "name", "namespace"), "PolicyTargetReference")
    get = lambda k: _str(n) if (n := _opt(node, k)) is not None else ""  # noqa: E731
    return TargetRef(get("group"), get("kind"), get("name"), get("namespace"), node.pos)


def _target_refs(spec: Node) -> tuple[TargetRef, ...]:
    refs = list(_list_of(_opt(spec, "targetRefs"), _target_ref) or ())
    single = _opt(spec, "targetRef")
    if single is not None:
        refs.insert(0, _target_ref(single))
    return tuple(refs)


def _source(node: Node) -> Source:
    _fields(node, _SOURCE, "Source")
    return Source(pos=node.pos, **{py: _str_list(_opt(node, key)) for key, py in _SOURCE.items()})


def _operation(node: Node) -> Operation:
    _fields(node, _OPERATION, "Operation")
    return Operation(pos=node.pos, **{py: _str_list(_opt(node, key)) for key, py in _OPERATION.items()})


def _from(node: Node) -> Source:
    _fields(node, ("source",), "Rule.From")
    src = _opt(node, "source")
    if src is None:
        raise node.error("`from.source` must not be nil", reason="empty_value")
    return _source(src)


def _to(node: Node) -> Operation:
    _fields(node, ("operation",), "Rule.To")
    op = _opt(node, "operation")
    if op is None:
        raise node.error("`to.operation` must not be nil", reason="empty_value")
    return _operation(op)


def _condition(node: Node) -> Condition:
    _fields(node, ("key", "values", "notValues"), "Condition")
    key = _opt(node, "key")
    return Condition(key=_str(key) if key is not None else "", values=_str_list(_opt(node, "values")),
                     not_values=_str_list(_opt(node, "notValues")), pos=node.pos)


def _rule(node: Node) -> Rule:
    _fields(node, ("from", "to", "when"), "Rule")
    froms = _list_of(_opt(node, "from"), _from)
    tos = _list_of(_opt(node, "to"), _to)
    if froms is not None and not froms:
        report(node.child("from").error("`from` must not be empty", reason="empty_value"))
    if tos is not None and not tos:
        report(node.child("to").error("`to` must not be empty", reason="empty_value"))
    return Rule(from_=froms, to=tos, when=_list_of(_opt(node, "when"), _condition) or (), pos=node.pos)


def _authorization(node: Node, order: int) -> AuthorizationPolicy:
    meta, spec = _meta(node, order)
    _fields(spec, ("selector", "targetRef", "targetRefs", "action", "provider", "rules"), "AuthorizationPolicy spec")
    provider = None
    if (pnode := _opt(spec, "provider")) is not None:
        _fields(pnode, ("name",), "Provider")
        provider = _str(pnode.child("name")) if _opt(pnode, "name") is not None else ""
    action_node = _opt(spec, "action")
    rules = _list_of(_opt(spec, "rules"), _rule)
    ap = AuthorizationPolicy(meta=meta, action=_enum(action_node, Action) if action_node else Action.ALLOW,
                             selector=_selector(spec), target_refs=_target_refs(spec), provider=provider,
                             rules=rules or None, api_version=node.value["apiVersion"])
    validate.authorization_policy(ap, spec)
    return ap


def _mode(node: Node) -> MtlsMode:
    _fields(node, ("mode",), "MutualTLS")
    m = _opt(node, "mode")
    return _enum(m, MtlsMode) if m is not None else MtlsMode.UNSET


def _peer_authentication(node: Node, order: int) -> PeerAuthentication:
    meta, spec = _meta(node, order)
    _fields(spec, ("selector", "mtls", "portLevelMtls"), "PeerAuthentication spec")
    mtls = _opt(spec, "mtls")
    ports: list[PortMtls] = []
    if (pl := _opt(spec, "portLevelMtls")) is not None:
        if not pl.is_map():
            raise pl.error(f"must be a mapping of port to MutualTLS, found {_type_name(pl.value)}", reason="type")
        for key in pl.value:
            try:
                port = int(key) if not isinstance(key, bool) else -1
            except (TypeError, ValueError):
                port = -1
            if port <= 0 or port > 65535:
                report(PolicyError(f"{pl.path}: port must be in range 1..65535, found {key!r}",
                                   location=str(pl.key_pos(key)), field=pl.path, reason="port_level"))
                continue
            child = pl.child(key)
            ports.append(PortMtls(port, _mode(child) if child.value is not None else MtlsMode.UNSET, child.pos))
    pa = PeerAuthentication(meta=meta, selector=_selector(spec), mode=_mode(mtls) if mtls is not None else None,
                            port_level=tuple(ports), api_version=node.value["apiVersion"])
    validate.peer_authentication(pa, spec)
    return pa


def _jwt_header(node: Node) -> JwtHeader:
    _fields(node, ("name", "prefix"), "JWTHeader")
    name = _opt(node, "name")
    prefix = _opt(node, "prefix")
    return JwtHeader(_str(name) if name else "", _str(prefix) if prefix else "")


def _claim_to_header(node: Node) -> ClaimToHeader:
    _fields(node, ("header", "claim"), "ClaimToHeader")
    h, c = _opt(node, "header"), _opt(node, "claim")
    return ClaimToHeader(_str(h) if h else "", _str(c) if c else "")


_JWT_FIELDS = ("issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams", "fromCookies",
               "outputPayloadToHeader", "forwardOriginalToken", "outputClaimToHeaders", "timeout",
               "spaceDelimitedClaims")


def _jwt_rule(node: Node) -> JwtRule:
    _fields(node, _JWT_FIELDS, "JWTRule")
    s = lambda k: _str(n) if (n := _opt(node, k)) is not None else ""  # noqa: E731
    timeout = None
    if (t := _opt(node, "timeout")) is not None:
        m = _DURATION.match(_str(t))
        if not m or float(m.group(1)) < 0.001:
            raise t.error("must be a duration of at least 1ms such as '5s' or '0.5s'", reason="jwt")
        timeout = float(m.group(1))
    fwd = _opt(node, "forwardOriginalToken")
    return JwtRule(issuer=s("issuer"), audiences=_str_list(_opt(node, "audiences")), jwks_uri=s("jwksUri"),
                   jwks=s("jwks"), from_headers=_list_of(_opt(node, "fromHeaders"), _jwt_header) or (),
                   from_params=_str_list(_opt(node, "fromParams")), from_cookies=_str_list(_opt(node, "fromCookies")),
                   output_payload_to_header=s("outputPayloadToHeader"),
                   forward_original_token=_bool(fwd) if fwd is not None else False,
                   output_claim_to_headers=_list_of(_opt(node, "outputClaimToHeaders"), _claim_to_header) or (),
                   timeout_seconds=timeout, space_delimited_claims=_str_list(_opt(node, "spaceDelimitedClaims")),
                   pos=node.pos)


def _request_authentication(node: Node, order: int) -> RequestAuthentication:
    meta, spec = _meta(node, order)
    _fields(spec, ("selector", "targetRef", "targetRefs", "jwtRules"), "RequestAuthentication spec")
    jwt_node = _opt(spec, "jwtRules")
    rules = _list_of(jwt_node, _jwt_rule) or ()
    ra = RequestAuthentication(meta=meta, selector=_selector(spec), target_refs=_target_refs(spec),
                               jwt_rules=rules, api_version=node.value["apiVersion"])
    validate.request_authentication(ra, spec)
    return ra


_PARSERS: dict[str, Callable[[Node, int], Any]] = {
    "AuthorizationPolicy": _authorization,
    "PeerAuthentication": _peer_authentication,
    "RequestAuthentication": _request_authentication,
}
