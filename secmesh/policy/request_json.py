"""The request description `secmesh policy check` (and policy tests) take, parsed strictly.

Shape (JSON, or YAML — JSON is read through the same positioned YAML loader so errors name
`file:line:col`):

    {"workload": {"namespace": "default", "labels": {"app": "web"}},
     "protocol": "http" | "tcp",
     "source": {"principal": "spiffe://td/ns/a/sa/b" (absent = plaintext), "ip": "10.0.0.1",
                "remote_ip": "…" (defaults to ip)},
     "destination": {"ip": "10.0.0.2", "port": 8080},
     "connection": {"sni": "…"},
     "request": {"method": "GET", "host": "web", "path": "/raw/:path?q", "headers": {"x": "1" | ["1", "2"]},
                 "auth": {"claims": {…verified JWT payload…}}}}
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmesh.errors import PolicyError
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId
from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.model import Workload
from secmesh.policy.normalize import InvalidPath, PathNormalization
from secmesh.policy.yamlsrc import Node, parse_stream

_FIELDS = {
    "": ("workload", "protocol", "source", "destination", "connection", "request"),
    "workload": ("namespace", "labels"),
    "source": ("principal", "ip", "remote_ip"),
    "destination": ("ip", "port"),
    "connection": ("sni",),
    "request": ("method", "host", "path", "headers", "auth"),
    "request.auth": ("claims",),
}


@dataclass(frozen=True, slots=True)
class CheckRequest:
    workload: Workload
    protocol: str
    conn: ConnAttrs
    request: RequestAttrs | None


def load_request(path: str | Path, normalization: PathNormalization = PathNormalization.BASE) -> CheckRequest:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read request file: {exc}", location=f"{p}:1:1", reason="unreadable") from exc
    return parse_request(text, str(p), normalization)


def parse_request(text: str, filename: str = "<request>",
                  normalization: PathNormalization = PathNormalization.BASE) -> CheckRequest:
    docs = list(parse_stream(text, filename))
    if len(docs) != 1:
        raise PolicyError(f"expected exactly one request object, found {len(docs)}", location=f"{filename}:1:1",
                          reason="request")
    return request_from_node(Node(docs[0].data, filename, docs[0].pos, ""), normalization)


def request_from_node(root: Node, normalization: PathNormalization = PathNormalization.BASE) -> CheckRequest:
    """The same schema read from a positioned YAML node (a `policy test` case's `request:`)."""
    _check(root, "")
    ns = _opt(root, "workload")
    workload = Workload("default", {})
    if ns is not None:
        _check(ns, "workload")
        labels = _opt(ns, "labels")
        workload = Workload(_text(_opt(ns, "namespace")) or "default", _labels(labels) if labels is not None else {})
    protocol = _text(_opt(root, "protocol")) or "http"
    if protocol not in ("http", "tcp"):
        raise root.child("protocol").error("must be 'http' or 'tcp'", reason="request")
    src, dst, conn = _opt(root, "source"), _opt(root, "destination"), _opt(root, "connection")
    principal = sip = rip = dip = sni = None
    port = None
    if src is not None:
        _check(src, "source")
        principal = _text(_opt(src, "principal"))
        if principal is not None:
            try:
                SpiffeId.parse(principal)
            except InvalidSpiffeId as exc:
                raise src.child("principal").error(f"not a SPIFFE ID ({exc})", reason="request") from None
        sip, rip = _ip(_opt(src, "ip")), _ip(_opt(src, "remote_ip"))
    if dst is not None:
        _check(dst, "destination")
        dip = _ip(_opt(dst, "ip"))
        pnode = _opt(dst, "port")
        if pnode is not None:
            port = pnode.scalar()
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise pnode.error("must be an integer port 0..65535", reason="request")
    if conn is not None:
        _check(conn, "connection")
        sni = _text(_opt(conn, "sni"))
    attrs = ConnAttrs(principal, sip, rip if rip is not None else sip, dip, port, sni)
    req = None
    rnode = _opt(root, "request")
    if rnode is not None:
        req = _request(rnode, normalization)
    elif protocol == "http":
        raise root.error("`request` is required when protocol is http", reason="request")
    return CheckRequest(workload, protocol, attrs, req)


def _request(node: Node, normalization: PathNormalization) -> RequestAttrs:
    _check(node, "request")
    headers: dict[str, Any] = {}
    if (h := _opt(node, "headers")) is not None:
        if not h.is_map():
            raise h.error("must be a mapping of header name to string or list of strings", reason="request")
        for name in h.value:
            v = h.child(name)
            if v.is_seq():
                headers[str(name)] = [_text(i) or "" for i in v.items()]
            else:
                headers[str(name)] = _text(v) or ""
    claims = None
    if (a := _opt(node, "auth")) is not None:
        _check(a, "request.auth")
        c = _opt(a, "claims")
        if c is not None:
            if not c.is_map():
                raise c.error("must be a mapping (the verified JWT payload)", reason="request")
            claims = _plain(c.value)
    path = _text(_opt(node, "path")) or "/"
    try:
        return RequestAttrs.from_raw(_text(_opt(node, "method")) or "GET", path, normalization=normalization,
                                     host=_text(_opt(node, "host")), headers=headers, claims=claims)
    except InvalidPath as exc:
        raise node.child("path").error(exc.message, reason="invalid_path") from None


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return getattr(v, "value", v) if type(v).__name__ == "TaggedScalar" else v


def _check(node: Node, section: str) -> None:
    if not node.is_map():
        raise node.error("must be a mapping", reason="request")
    allowed = _FIELDS[section]
    for key in node.value:
        if key not in allowed:
            raise PolicyError(f"{section + '.' if section else ''}{key}: unknown field; expected one of "
                              f"{', '.join(allowed)}", location=str(node.key_pos(key)), reason="request")


def _opt(node: Node, key: str) -> Node | None:
    return node.child(key) if key in node.value and node.value[key] is not None else None


def _text(node: Node | None) -> str | None:
    if node is None:
        return None
    v = node.scalar()
    if not isinstance(v, str):
        raise node.error("must be a string", reason="request")
    return v


def _labels(node: Node) -> dict[str, str]:
    if not node.is_map():
        raise node.error("must be a mapping of strings", reason="request")
    return {str(k): _text(node.child(k)) or "" for k in node.value}


def _ip(node: Node | None) -> str | None:
    text = _text(node)
    if text is None:
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise node.error(f"not an IP address: {text!r}", reason="request") from None  # type: ignore[union-attr]
    return text
