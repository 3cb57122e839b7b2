"""Small per-request decisions of the HTTP path: request id, upstream protocol, WebSocket, gRPC deadline. Pure."""

from __future__ import annotations

from random import getrandbits as _getrandbits

from secmesh.sidecar.codec.headers import h1_to_h2, h2_to_h1
from secmesh.sidecar.codec.stream import Headers

HTTP1, HTTP2 = "http1", "http2"

_V4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_V4_SET = (0x4 << 76) | (0x2 << 62)
_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def request_id() -> bytes:
    """A random (version 4) UUID as bytes, without a `uuid.UUID` or a system call per request.

    A request id correlates log lines; it is no secret, so the process PRNG (seeded from the
    OS) serves; the version and variant bits are set as RFC 9562 §5.4 says."""
    h = (_getrandbits(128) & _V4_CLEAR) | _V4_SET
    return b"%08x-%04x-%04x-%04x-%012x" % (h >> 96, (h >> 80) & 0xFFFF, (h >> 64) & 0xFFFF, (h >> 48) & 0xFFFF,
                                           h & 0xFFFFFFFFFFFF)


def upstream_protocol(cluster: str, listener_default: str, downstream: str, *, grpc: bool, tunnel: bool) -> str:
    """The cluster's protocol, else the listener's, else what the client speaks; gRPC needs h2, a
    WebSocket tunnel HTTP/1.1 (the two cases where the choice is not ours)."""
    if grpc:
        return HTTP2
    if tunnel:
        return HTTP1
    proto = cluster if cluster != "auto" else listener_default
    return downstream if proto == "auto" else proto


def translate(headers: Headers, downstream: str, upstream: str) -> Headers:
    """Header fields fit for the upstream's protocol (h1 ⇄ h2), unchanged when both speak the same."""
    if upstream == downstream:
        return headers
    return h1_to_h2(headers) if upstream == HTTP2 else h2_to_h1(headers)


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


def wants_websocket(headers: list) -> bool:
    """`Upgrade: websocket` with `Connection: upgrade` (RFC 6455 §4.1): the request asks for a tunnel."""
    up = conn = False
    for n, v in headers:
        if n == b"upgrade":
            up = up or b"websocket" in _tokens(v)
        elif n == b"connection":
            conn = conn or b"upgrade" in _tokens(v)
    return up and conn


def grpc_timeout(headers: list) -> float | None:
    """`grpc-timeout` (up to 8 digits and a unit, gRPC's HTTP/2 spec) in seconds; None if absent or bad."""
    for n, v in headers:
        if n == b"grpc-timeout" and 2 <= len(v) <= 9 and v[:-1].isdigit():
            unit = _GRPC_UNITS.get(v[-1:])
            return int(v[:-1]) * unit if unit is not None else None
    return None
