"""Which codec a connection gets: port protocol, then ALPN, then the first bytes. Pure.

Each protocol contributes one `Rule` (its ALPN ids and a sniffer over the first bytes); a new
protocol registers one more rule and nothing else changes. `detect` returns None while the
bytes seen so far could still go either way; the I/O shell then reads more (bounded by
`MAX_SNIFF` and its own timeout, after which it calls again with `final=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

HTTP1, HTTP2, TCP = "http1", "http2", "tcp"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_SNIFF = len(H2_PREFACE)        # enough to tell every rule apart

Sniffer = Callable[[bytes], Optional[bool]]   # True: mine; False: not mine; None: need more


@dataclass(frozen=True, slots=True)
class Rule:
    protocol: str
    alpn: tuple[str, ...]
    sniff: Sniffer
    server: str = ""               # "module:Class" of its downstream codec ("" for opaque TCP)
    client: str = ""               # "module:Class" of its upstream codec


def _sniff_h2(first: bytes) -> bool | None:
    n = min(len(first), MAX_SNIFF)
    if first[:n] != H2_PREFACE[:n]:
        return False
    return True if n == MAX_SNIFF else None


# llhttp's methods that real clients send (RFC 9110 + WebDAV + PATCH); PRI is HTTP/2's.
HTTP1_METHODS = frozenset((
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT",
    b"SEARCH", b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK"))
_LONGEST_METHOD = max(map(len, HTTP1_METHODS))


def _sniff_http1(first: bytes) -> bool | None:
    """An HTTP/1.x request line starts with a known method and a space."""
    sp = first.find(b" ", 0, _LONGEST_METHOD + 1)
    if sp > 0:
        return first[:sp] in HTTP1_METHODS
    if len(first) > _LONGEST_METHOD:
        return False
    return None if any(m.startswith(first) for m in HTTP1_METHODS) else False


_PKG = "secmesh.sidecar.codec."
RULES: list[Rule] = [                                 # h2 first: both could start with "P"
    Rule(HTTP2, ("h2",), _sniff_h2, _PKG + "http2:H2ServerCodec", _PKG + "http2:H2ClientCodec"),
    Rule(HTTP1, ("http/1.1", "http/1.0"), _sniff_http1,
         _PKG + "http1:H1ServerCodec", _PKG + "http1_client:H1ClientCodec"),
]


def register(rule: Rule) -> None:
    """Add a protocol's rule (called by its codec module at import)."""
    RULES.append(rule)


def rule_for(protocol: str) -> Rule | None:
    return next((r for r in RULES if r.protocol == protocol), None)


def detect(first: bytes, alpn: str | None = None, *, port_protocol: str = "auto",
           final: bool = False) -> str | None:
    """Protocol for this connection, or None if more bytes are needed.

    `port_protocol`: "tcp" (never decode), "http" (some HTTP: ALPN, else sniffed, else HTTP/1.1
    so that the codec answers 400), "auto" (ALPN or sniffed, else opaque TCP), or a protocol
    name to force. `final`: no more bytes will come (EOF, MAX_SNIFF reached or sniff timeout).
    """
    if port_protocol == TCP:
        return TCP
    if port_protocol not in ("auto", "http"):
        return port_protocol
    if alpn:
        for rule in RULES:
            if alpn in rule.alpn:
                return rule.protocol
    final = final or len(first) >= MAX_SNIFF
    undecided = False
    if first:
        for rule in RULES:
            verdict = rule.sniff(first)
            if verdict:
                return rule.protocol
            undecided = undecided or verdict is None
    elif not final:
        return None
    if undecided and not final:
        return None
    return HTTP1 if port_protocol == "http" else TCP
