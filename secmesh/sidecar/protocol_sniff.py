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

The rules themselves (ALPN ids, preface, request line) are the codec registry's
(`codec.detect.RULES`), so a protocol added there is detected here too. The HTTP/1.x test used
here is the rule's `strict` one, because a false "HTTP" would feed a binary protocol
to the HTTP codec (which would answer 400 and close): a known method token, exactly one space,
a request target of visible ASCII starting the way the four RFC 9112 target forms start (`/`,
`*`, a scheme or an authority), one space, `HTTP/1.<digit>`, then CRLF (or a bare LF). Being
wrong the other way (an HTTP client taken for TCP, e.g. one slower than the timeout) never
weakens authorization: a connection whose policies need request attributes is refused when it
turns out to be TCP (see `l7_conn.AutoConn`), and any other connection-time ALLOW holds for
every request anyway.
"""

from __future__ import annotations

from secmesh.sidecar.codec import detect as _registry
from secmesh.sidecar.codec.detect import HTTP1, HTTP2, STRICT_MAX_SNIFF, TCP

__all__ = ["HTTP1", "HTTP2", "TCP", "TIMEOUT_TCP", "MAX_SNIFF", "DEFAULT_TIMEOUT", "by_alpn", "sniff", "detect"]

TIMEOUT_TCP = "timeout_tcp"        # metric label: nothing (or nothing conclusive) came before the timeout
MAX_SNIFF = STRICT_MAX_SNIFF       # a request line longer than this is not worth waiting for: TCP
DEFAULT_TIMEOUT = 0.1              # seconds; Istio's historical protocolDetectionTimeout (now 0s = off)


by_alpn = _registry.by_alpn


def sniff(first: bytes, *, final: bool = False, limit: int = MAX_SNIFF) -> str | None:
    """A registered protocol or `tcp` for the first bytes of a connection, or None to wait for more.

    `final`: no more bytes will be waited for (EOF or the detection timeout); an undecided prefix
    is then TCP. Bytes beyond `limit` without a verdict are TCP too.
    """
    return _registry.detect(first, None, port_protocol="auto", final=final, limit=limit)


def detect(first: bytes, alpn: str | None = None, *, final: bool = False) -> str | None:
    """ALPN first, then `sniff`."""
    return _registry.detect(first, alpn, port_protocol="auto", final=final)
