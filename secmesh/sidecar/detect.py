"""What a new connection speaks, from its first bytes, and what PeerAuthentication makes of it.

Pure functions: the listener peeks at the first bytes (MSG_PEEK, nothing consumed) and asks
`sniff`; then `admit` applies the port's mTLS mode. Only TLS vs plaintext for now; ALPN and
HTTP/2 preface detection will join here when codecs arrive.
"""

from __future__ import annotations

from enum import Enum

from secmesh.sidecar.config import MtlsMode

SNIFF_BYTES = 3   # record type (0x16 handshake) + legacy version major 0x03 + minor 0x00..0x04


class Wire(str, Enum):
    TLS = "tls"
    PLAINTEXT = "plaintext"
    UNKNOWN = "unknown"   # not enough bytes yet


def sniff(first: bytes) -> Wire:
    """A TLS ClientHello record starts 0x16 0x03 0x0[0-4]; anything else is plaintext."""
    if not first:
        return Wire.UNKNOWN
    if first[0] != 0x16:
        return Wire.PLAINTEXT
    if len(first) < 2:
        return Wire.UNKNOWN
    if first[1] != 0x03:
        return Wire.PLAINTEXT
    if len(first) < 3:
        return Wire.UNKNOWN
    return Wire.TLS if first[2] <= 0x04 else Wire.PLAINTEXT


def classify(first: bytes) -> Wire:
    """Like `sniff`, but decide on what is there: a lone leading 0x16 counts as TLS.

    Used when peeking returned fewer bytes than wanted; waiting for more would spin on a
    level-triggered readable socket, and no plaintext protocol we front starts with 0x16.
    """
    wire = sniff(first)
    if wire is Wire.UNKNOWN and first:
        return Wire.TLS if first[0] == 0x16 else Wire.PLAINTEXT
    return wire


def admit(mode: MtlsMode, wire: Wire) -> tuple[bool, str]:
    """PeerAuthentication: may a connection of this `wire` kind proceed on a port in `mode`?"""
    if mode is MtlsMode.STRICT:
        return (wire is Wire.TLS, "ok" if wire is Wire.TLS else "plaintext refused: port is STRICT")
    if mode is MtlsMode.DISABLE:
        return (True, "ok")   # passthrough: whatever the client speaks goes to the app untouched
    return (wire is not Wire.UNKNOWN, "ok")
