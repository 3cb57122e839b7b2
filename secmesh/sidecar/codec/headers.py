"""Header rewrites a proxy applies between the downstream and upstream codecs. Pure.

- Hop-by-hop fields (RFC 9110 §7.6.1) never cross the proxy, nor do fields the sender named
  in `Connection`. `te: trailers` may (gRPC needs it on HTTP/2).
- `x-forwarded-client-cert` is always *replaced*, never trusted from the peer, in Envoy's
  format `By=<our URI>;Hash=<sha256 hex of the peer leaf DER>;URI=<peer URI>`; so the app can
  believe it. Without a verified peer it is removed.
- `x-forwarded-for` gets the client address appended; `x-request-id` is kept or generated.

`forward_request_headers` does all of that in one pass (the per-request hot path); the small
functions exist for the other call sites and for tests.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Callable

from secmesh.sidecar.codec.stream import Headers

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"transfer-encoding", b"upgrade", b"http2-settings"))
# Framing and routing fields a `Connection: …` list must not be able to strip.
_PROTECTED = frozenset((b"host", b"content-length", b"content-type", b"x-forwarded-client-cert",
                        b"x-forwarded-for", b"x-request-id"))
XFCC = b"x-forwarded-client-cert"
XFF = b"x-forwarded-for"
REQUEST_ID = b"x-request-id"
_QUOTE_TRIGGERS = frozenset(b',;="')


def _connection_listed(headers: Headers) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            listed.update(t.strip().lower() for t in value.split(b","))
    return frozenset(listed) - _PROTECTED


def _drop_connection_listed(out: Headers, headers: Headers) -> Headers:
    """`out` without the fields `headers`' Connection header nominates (RFC 9110 §7.6.1)."""
    extra = _connection_listed(headers) - HOP_BY_HOP
    return [(n, v) for n, v in out if n not in extra] if extra else out


def _dropper(headers: Headers, keep_upgrade: bool) -> frozenset[bytes]:
    drop = HOP_BY_HOP | _connection_listed(headers)
    return drop - {b"upgrade"} if keep_upgrade else drop


def _keep_te(value: bytes) -> bool:
    return value.strip().lower() == b"trailers"


def strip_hop_by_hop(headers: Headers, *, keep_te_trailers: bool = True, keep_upgrade: bool = False) -> Headers:
    """Drop hop-by-hop fields and those named in `Connection`; `keep_upgrade` for WebSocket.

    One pass drops the fixed set; names a `Connection` field lists are filtered out afterwards,
    only when it lists any beyond that set (`Connection: keep-alive`, the usual one, does not)."""
    out: Headers = []
    listed = False
    for n, v in headers:
        if n in HOP_BY_HOP:
            if n == b"connection":
                if not listed and v.lower() != b"keep-alive":
                    listed = True
            elif n == b"te":
                if keep_te_trailers and _keep_te(v):
                    out.append((n, v))
            elif n == b"upgrade" and keep_upgrade:
                out.append((n, v))
        else:
            out.append((n, v))
    if listed:
        out = _drop_connection_listed(out, headers)
    return out


def _quote(value: str) -> bytes:
    raw = value.encode()
    if not any(c in _QUOTE_TRIGGERS for c in raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def xfcc_value(*, by: str | None, peer_cert_der: bytes | None, peer_uri: str | None) -> bytes | None:
    """One XFCC element for the peer of this connection (compute once per connection)."""
    parts = []
    if by:
        parts.append(b"By=" + _quote(by))
    if peer_cert_der:
        parts.append(b"Hash=" + hashlib.sha256(peer_cert_der).hexdigest().encode())
    if peer_uri:
        parts.append(b"URI=" + _quote(peer_uri))
    return b";".join(parts) if peer_cert_der or peer_uri else None


def set_xfcc(headers: Headers, value: bytes | None) -> Headers:
    """Remove every incoming XFCC and, if we have a verified peer, add ours."""
    out = [(n, v) for n, v in headers if n != XFCC]
    if value:
        out.append((XFCC, value))
    return out


def append_xff(headers: Headers, client_ip: str | bytes) -> Headers:
    """Append the client address to x-forwarded-for (several fields are merged into one)."""
    ip = client_ip.encode() if isinstance(client_ip, str) else client_ip
    prior = [v for n, v in headers if n == XFF]
    out = [(n, v) for n, v in headers if n != XFF]
    out.append((XFF, b", ".join(prior + [ip])))
    return out


def new_request_id() -> bytes:
    return str(uuid.uuid4()).encode()


def ensure_request_id(headers: Headers, make_id: Callable[[], bytes] = new_request_id) -> tuple[Headers, bytes]:
    """Keep the first non-empty x-request-id, or add a fresh one; return it too."""
    for n, v in headers:
        if n == REQUEST_ID and v:
            return headers, v
    rid = make_id()
    return [(n, v) for n, v in headers if n != REQUEST_ID] + [(REQUEST_ID, rid)], rid


def forward_request_headers(headers: Headers, *, xfcc: bytes | None, client_ip: str | bytes | None,
                            make_id: Callable[[], bytes] = new_request_id,
                            keep_upgrade: bool = False) -> tuple[Headers, bytes]:
    """Everything above in one pass: → (headers for the upstream, request id).

    `Connection`-listed names are only known once the whole list is seen, so the single pass
    drops the fixed hop-by-hop set and, in the rare case a `Connection` field named others,
    filters those out afterwards (the same result as computing the drop set first)."""
    out: Headers = []
    xff: list[bytes] = []
    rid = b""
    listed = False
    for n, v in headers:
        if n in HOP_BY_HOP:
            if n == b"connection":
                listed = True
            elif n == b"te" and _keep_te(v):
                out.append((n, v))
            elif n == b"upgrade" and keep_upgrade:
                out.append((n, v))
        elif n == XFCC:
            continue
        elif n == XFF:
            xff.append(v)
        elif n == REQUEST_ID:
            if not rid and v:
                rid = v
        else:
            out.append((n, v))
    if listed:
        out = _drop_connection_listed(out, headers)
    if client_ip is not None:
        xff.append(client_ip.encode() if isinstance(client_ip, str) else client_ip)
    if xff:
        out.append((XFF, b", ".join(xff)))
    if xfcc:
        out.append((XFCC, xfcc))
    out.append((REQUEST_ID, rid or make_id()))
    return out, out[-1][1]


def forward_response_headers(headers: Headers) -> Headers:
    """Responses only lose their hop-by-hop fields."""
    return strip_hop_by_hop(headers, keep_te_trailers=False)


# === HTTP/2 ⇄ HTTP/1.1 (the stream model already carries :authority / Host as `authority`) ===

def h1_to_h2(headers: Headers) -> Headers:
    """Fields of an HTTP/1.1 message made fit for HTTP/2: connection-specific ones dropped,
    `te` only as `trailers` (RFC 9113 §8.2.2)."""
    return strip_hop_by_hop(headers, keep_te_trailers=True)


def h2_to_h1(headers: Headers) -> Headers:
    """Fields of an HTTP/2 message for HTTP/1.1: cookie crumbs joined (RFC 9113 §8.2.3), `te`
    dropped (it is hop-by-hop in HTTP/1.1 and would need `Connection: TE`)."""
    cookies = [v for n, v in headers if n == b"cookie"]
    out = [(n, v) for n, v in strip_hop_by_hop(headers, keep_te_trailers=False) if n != b"cookie"]
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    return out
