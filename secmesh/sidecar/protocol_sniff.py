"""`protocol: auto`: is this connection HTTP or opaque TCP? Pure functions over the first bytes.

Envoy's `http_inspector` listener filter, which Istio puts in front of ports whose protocol is
not declared, is the model:

- ALPN decides at once when the TLS handshake negotiated `h2` or `http/1.1` (mTLS ports).
- Otherwise the first bytes the client sends: the HTTP/2 connection preface
  (`PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`) → `http2`; an HTTP/1.x request line → `http1`;
  anything else → `tcp`.
- While the bytes seen so far could still become one of those (a partial first read), the
  answer is None: read more. The shell bounds that by `MAX_SNIFF` bytes and by the listener's
  `protocol_detection_timeout`, after which it calls again with `final=True`.

The HTTP/1.x test is deliberately strict, because a false "HTTP" would feed a binary protocol
to the HTTP codec (which would answer 400 and close): a known method token, exactly one space,
a request target of visible ASCII starting the way the four RFC 9112 target forms start (`/`,
`*`, a scheme or an authority), one space, `HTTP/1.<digit>`, then CRLF (or a bare LF). Being
wrong the other way (an HTTP client taken for TCP, e.g. one slower than the timeout) never
weakens authorization: a connection whose policies need request attributes is refused when it
turns out to be TCP (see `l7_conn.AutoConn`), and any other connection-time ALLOW holds for
every request anyway.
"""

from __future__ import annotations

from secmesh.sidecar.codec.detect import H2_PREFACE, HTTP1_METHODS

HTTP1, HTTP2, TCP = "http1", "http2", "tcp"
TIMEOUT_TCP = "timeout_tcp"        # metric label: nothing (or nothing conclusive) came before the timeout
MAX_SNIFF = 8192                   # a request line longer than this is not worth waiting for: TCP
DEFAULT_TIMEOUT = 0.1              # seconds; Istio's historical protocolDetectionTimeout (now 0s = off)

_ALPN = {"h2": HTTP2, "http/1.1": HTTP1, "http/1.0": HTTP1}
_LONGEST_METHOD = max(map(len, HTTP1_METHODS))
_VISIBLE = bytes(range(0x21, 0x7F))            # request-target bytes: VCHAR, no space, no controls
_TARGET_START = frozenset(b"/*[" + bytes(range(0x30, 0x3A)) + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B)))
_VERSION = b"HTTP/1."


def by_alpn(alpn: str | None) -> str | None:
    """The protocol an ALPN id fixes (`h2` → http2, `http/1.1` → http1), or None (sniff)."""
    return _ALPN.get(alpn or "")


def _h2(first: bytes) -> bool | None:
    n = min(len(first), len(H2_PREFACE))
    if first[:n] != H2_PREFACE[:n]:
        return False
    return True if n == len(H2_PREFACE) else None


def _http1(first: bytes) -> bool | None:
    """True: an HTTP/1.x request line; False: cannot be one; None: a valid prefix so far."""
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


def sniff(first: bytes, *, final: bool = False, limit: int = MAX_SNIFF) -> str | None:
    """`http2`, `http1` or `tcp` for the first bytes of a connection, or None to wait for more.

    `final`: no more bytes will be waited for (EOF or the detection timeout); an undecided prefix
    is then TCP. Bytes beyond `limit` without a verdict are TCP too.
    """
    if not first:
        return TCP if final else None
    h2 = _h2(first)
    if h2:
        return HTTP2
    h1 = _http1(first)
    if h1:
        return HTTP1
    if h2 is None or h1 is None:
        return TCP if final or len(first) >= limit else None
    return TCP


def detect(first: bytes, alpn: str | None = None, *, final: bool = False) -> str | None:
    """ALPN first, then `sniff`."""
    return by_alpn(alpn) or sniff(first, final=final)
