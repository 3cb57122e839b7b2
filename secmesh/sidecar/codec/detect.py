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
STRICT_MAX_SNIFF = 8192            # `auto` ports wait for a whole request line, but not for a longer one

Sniffer = Callable[[bytes], Optional[bool]]   # True: mine; False: not mine; None: need more


@dataclass(frozen=True, slots=True)
class Rule:
    protocol: str
    alpn: tuple[str, ...]
    sniff: Sniffer
    server: str = ""               # "module:Class" of its downstream codec ("" for opaque TCP)
    client: str = ""               # "module:Class" of its upstream codec
    strict: Sniffer | None = None  # `auto` ports (where the fallback is TCP): a stricter test, if any


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


_VISIBLE = bytes(range(0x21, 0x7F))            # request-target bytes: VCHAR, no space, no controls
_TARGET_START = frozenset(b"/*[" + bytes(range(0x30, 0x3A)) + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B)))
_VERSION = b"HTTP/1."


def _request_line(first: bytes) -> bool | None:
    """Strict: a whole HTTP/1.x request line (method, target, `HTTP/1.<digit>`, end of line); None: a
    valid prefix so far. Used where a false "HTTP" would feed a binary protocol to the codec."""
    sp = first.find(b" ", 0, _LONGEST_METHOD + 1)
    if sp < 0:
        if len(first) > _LONGEST_METHOD:
            return False
        return None if any(m.startswith(first) for m in HTTP1_METHODS) else False
    if first[:sp] not in HTTP1_METHODS:
        return False
    i = sp + 1
    if i == len(first):
        return None
    if first[i] not in _TARGET_START:
        return False
    end = first.find(b" ", i)
    target = first[i:] if end < 0 else first[i:end]
    if target.translate(None, _VISIBLE):         # a control byte, DEL or 8-bit byte in the target
        return False
    if end < 0:
        return None
    rest = first[end + 1:]
    n = min(len(rest), len(_VERSION))
    if rest[:n] != _VERSION[:n]:
        return False
    if len(rest) <= len(_VERSION):
        return None
    if not 0x30 <= rest[7] <= 0x39:
        return False
    if len(rest) == 8:
        return None
    if rest[8] == 0x0A:                          # bare LF: tolerated, as llhttp does
        return True
    if rest[8] != 0x0D:
        return False
    if len(rest) == 9:
        return None
    return rest[9] == 0x0A


_PKG = "secmesh.sidecar.codec."
RULES: list[Rule] = [                                 # h2 first: both could start with "P"
    Rule(HTTP2, ("h2",), _sniff_h2, _PKG + "http2:H2ServerCodec", _PKG + "http2:H2ClientCodec"),
    Rule(HTTP1, ("http/1.1", "http/1.0"), _sniff_http1,
         _PKG + "http1:H1ServerCodec", _PKG + "http1_client:H1ClientCodec", _request_line),
]


def register(rule: Rule) -> None:
    """Add a protocol's rule (called by its codec module at import)."""
    RULES.append(rule)


def rule_for(protocol: str) -> Rule | None:
    return next((r for r in RULES if r.protocol == protocol), None)


def by_alpn(alpn: str | None) -> str | None:
    """The protocol a negotiated ALPN id fixes (`h2` → http2, `http/1.1` → http1), or None (sniff)."""
    if alpn:
        for rule in RULES:
            if alpn in rule.alpn:
                return rule.protocol
    return None


def detect(first: bytes, alpn: str | None = None, *, port_protocol: str = "auto",
           final: bool = False, limit: int | None = None) -> str | None:
    """Protocol for this connection, or None if more bytes are needed.

    `port_protocol`: "tcp" (never decode), "http" (some HTTP: ALPN, else sniffed, else HTTP/1.1
    so that the codec answers 400), "auto" (ALPN or sniffed with each rule's `strict` test, else
    opaque TCP), or a protocol name to force. `final`: no more bytes will come (EOF, `limit`
    bytes seen — `MAX_SNIFF`, or `STRICT_MAX_SNIFF` on "auto" — or the sniff timeout).
    """
    if port_protocol == TCP:
        return TCP
    if port_protocol not in ("auto", "http"):
        return port_protocol
    proto = by_alpn(alpn)
    if proto is not None:
        return proto
    strict = port_protocol == "auto"
    if limit is None:
        limit = STRICT_MAX_SNIFF if strict else MAX_SNIFF
    final = final or len(first) >= limit
    undecided = False
    if first:
        for rule in RULES:
            verdict = (rule.strict or rule.sniff)(first) if strict else rule.sniff(first)
            if verdict:
                return rule.protocol
            undecided = undecided or verdict is None
    elif not final:
        return None
    if undecided and not final:
        return None
    return HTTP1 if port_protocol == "http" else TCP
