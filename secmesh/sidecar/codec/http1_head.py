"""The rules an HTTP/1.x request head must pass before it becomes an event. Pure.

llhttp already refuses malformed syntax, CL+TE, repeated Content-Length, Transfer-Encoding
other than chunked-last, obs-fold and bare CR/LF. What it leaves to us (RFC 9112): exactly
one Host on HTTP/1.1 (§3.2), no Transfer-Encoding on HTTP/1.0 (§6.1: faulty framing), the
request target's forms (§3.2), versions other than 1.0/1.1, the declared body limit, and what
an Upgrade or CONNECT turns into.
"""

from __future__ import annotations

from typing import NamedTuple

from httptools import HttpParserError, parse_url

from secmesh.sidecar.codec.stream import Reason

NORMAL, TUNNEL, IGNORED_UPGRADE = 0, 1, 2      # request kinds
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


class HeadFacts(NamedTuple):
    method: bytes
    version: str                   # as llhttp reports it: "1.1"
    target: bytes
    hosts: list[bytes]
    chunked: bool                  # a Transfer-Encoding field was present
    content_length: int | None
    upgrade: bool                  # llhttp's verdict: Upgrade + Connection: upgrade, or CONNECT
    upgrade_token: bytes           # first protocol named in Upgrade, lower-case


class RequestMeta(NamedTuple):
    """What sending the response needs to know about its request."""

    method: bytes
    version: bytes
    keep_alive: bool
    kind: int
    upgrade: bytes


class Refusal(NamedTuple):
    status: int
    reason: str
    detail: str


class Accepted(NamedTuple):
    version: bytes
    authority: bytes
    path: bytes
    kind: int                      # NORMAL | TUNNEL | IGNORED_UPGRADE
    protocol: bytes                # the tunnel's protocol (b"websocket", b"connect")


def judge_head(h: HeadFacts, max_body: int | None, allowed_upgrades: frozenset[bytes],
               allow_connect: bool) -> Accepted | Refusal:
    version = _VERSIONS.get(h.version)
    if version is None:
        return Refusal(505, Reason.UNSUPPORTED_VERSION, f"HTTP/{h.version}")
    if len(h.hosts) > 1 or (version == b"1.1" and not h.hosts):
        return Refusal(400, Reason.BAD_REQUEST, "missing or repeated Host")
    if h.chunked and version == b"1.0":
        return Refusal(400, Reason.SMUGGLING, "Transfer-Encoding in an HTTP/1.0 request")
    if max_body is not None and h.content_length is not None and h.content_length > max_body:
        return Refusal(413, Reason.BODY_TOO_LARGE, "declared Content-Length over the limit")
    target = request_target(h.method, h.target, h.hosts[0] if h.hosts else b"")
    if target is None:
        return Refusal(400, Reason.BAD_REQUEST, "bad request target")
    kind, proto = NORMAL, b""
    if h.upgrade:
        if h.method == b"CONNECT":
            if not allow_connect:
                return Refusal(405, Reason.METHOD_NOT_ALLOWED, "CONNECT not allowed here")
            kind, proto = TUNNEL, b"connect"
        elif h.chunked:        # llhttp skips an upgrade request's body; we can only count bytes
            return Refusal(400, Reason.BAD_REQUEST, "chunked body on an upgrade request")
        elif h.upgrade_token.split(b"/", 1)[0] in allowed_upgrades and not h.content_length:
            kind, proto = TUNNEL, h.upgrade_token
        else:
            kind = IGNORED_UPGRADE
    return Accepted(version, target[0], target[1], kind, proto)


def accept_head(method: bytes, version: str, target: bytes, hosts: list[bytes], chunked: bool,
                content_length: int | None, upgrade: bool, upgrade_token: bytes, max_body: int | None,
                allowed_upgrades: frozenset[bytes], allow_connect: bool) -> Accepted | Refusal:
    """`judge_head` on the parser's facts; the common case (HTTP/1.1, one Host, origin-form target,
    no Upgrade/CONNECT, length within the limit) is accepted without building `HeadFacts`."""
    if (version == "1.1" and len(hosts) == 1 and not upgrade and target[:1] == b"/"
            and (max_body is None or content_length is None or content_length <= max_body)):
        return (b"1.1", hosts[0], target, NORMAL, b"")    # an `Accepted`, as a plain tuple (no __new__ call)
    return judge_head(HeadFacts(method, version, target, hosts, chunked, content_length, upgrade, upgrade_token),
                      max_body, allowed_upgrades, allow_connect)


def request_target(method: bytes, target: bytes, host: bytes) -> tuple[bytes, bytes] | None:
    """(authority, path) from a request-target (RFC 9112 §3.2) and the Host value; None if bad.

    Origin-form uses Host; absolute-form's own authority wins over Host (§3.2.2); CONNECT
    carries authority-form; `*` only with OPTIONS.
    """
    if target[:1] == b"/":
        return host, target
    if method == b"CONNECT":
        return target, b""
    if target == b"*" and method == b"OPTIONS":
        return host, target
    try:
        url = parse_url(target)
    except HttpParserError:
        return None
    if not url.host or not url.schema:
        return None
    authority = url.host + (b":%d" % url.port if url.port else b"")
    return authority, (url.path or b"/") + (b"?" + url.query if url.query else b"")


def parser_error_reason(detail: str) -> str:
    """llhttp's framing complaints are smuggling attempts; the rest is just a bad request."""
    framing = "Content-Length" in detail or "Transfer-Encoding" in detail or "chunk" in detail.lower()
    return Reason.SMUGGLING if framing else Reason.BAD_REQUEST
