"""The Istio leaf profile as a DER template: the CA's hot path without `CertificateBuilder`.

`cryptography`'s builder spends ~55 µs per leaf turning Python extension objects into DER, more
than the ECDSA signature itself (~25 µs). Everything in a leaf except serial, validity, public
key, SPIFFE ID and SKI is the same for every leaf one issuer signs, so it is encoded once here
and the per-call work is byte concatenation, one SHA-1 and one signature.

The output is byte-identical to what `signer.leaf_builder(...).sign(...)` produces for the same
inputs (same TBS, same extension order); `tests/unit/ca/test_ca_leafder.py` holds the two paths
to that. Only ECDSA issuers (P-256 → SHA-256, P-384 → SHA-384) take this path; any other issuer
key makes `LeafTemplate.for_issuer` return None and the builder is used.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmesh.identity.keys import PrivateKey

# DER of the algorithm identifiers (no parameters for ECDSA, RFC 5758 §3.2)
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
_VERSION_3 = bytes.fromhex("a003020102")
_EMPTY_NAME = b"\x30\x00"
_OID_SAN = bytes.fromhex("0603551d11")
_OID_SKI = bytes.fromhex("0603551d0e")
_CRITICAL = b"\x01\x01\xff"
_UTC_LIMIT = 2050  # RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050
_SAN_CACHE = 4096  # distinct SPIFFE IDs whose SAN extension is remembered; emptied when full


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + der_length(len(body)) + body


def der_integer(value: int) -> bytes:
    """A non-negative INTEGER (a leading zero byte when the top bit is set)."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_time(when: _dt.datetime) -> bytes:
    when = when.astimezone(_dt.timezone.utc)
    if when.year < _UTC_LIMIT:
        return tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


def read_tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `offset`."""
    tag = data[offset]
    first = data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, offset + 2 + first
    count = first & 0x7F
    length = int.from_bytes(data[offset + 2:offset + 2 + count], "big")
    start = offset + 2 + count
    return tag, start, start + length


def spki_key_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's bytes (what RFC 5280 method 1 hashes into the SKI)."""
    _, start, _ = read_tlv(spki_der, 0)          # SubjectPublicKeyInfo SEQUENCE
    _, _, alg_end = read_tlv(spki_der, start)    # AlgorithmIdentifier
    tag, bits_start, bits_end = read_tlv(spki_der, alg_end)
    if tag != 0x03:
        raise ValueError("SubjectPublicKeyInfo has no BIT STRING")
    return spki_der[bits_start + 1:bits_end]     # skip the unused-bits octet


def _extension(oid_der: bytes, value_der: bytes, critical: bool) -> bytes:
    return tlv(0x30, oid_der + (_CRITICAL if critical else b"") + tlv(0x04, value_der))


def pem_certificate(der: bytes) -> str:
    """PEM exactly as `Certificate.public_bytes(PEM)` writes it (64-column base64, trailing newline)."""
    b64 = base64.b64encode(der).decode()
    lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


class LeafTemplate:
    """Precomputed DER of one issuer's leaves: only five fields change per certificate."""

    def __init__(self, issuer_cert: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey,
                 fixed_extensions: list[tuple[x509.ExtensionType, bool, bool]]) -> None:
        """`fixed_extensions`: (value, critical, before_san) in builder order; the SAN and SKI go between."""
        self.issuer_key = issuer_key
        self._hash: hashes.HashAlgorithm = hashes.SHA384() if issuer_key.curve.key_size >= 384 else hashes.SHA256()
        self._ecdsa = ec.ECDSA(self._hash)
        self._alg = _ECDSA_SHA384 if isinstance(self._hash, hashes.SHA384) else _ECDSA_SHA256
        self._issuer = issuer_cert.subject.public_bytes()
        self._before_san = b"".join(_fixed(v, critical) for v, critical, before in fixed_extensions if before)
        self._after_ski = b"".join(_fixed(v, critical) for v, critical, before in fixed_extensions if not before)
        # a batch shares one `now` (so one validity) and an agent renews the same identities: both
        # encodings are reused while they repeat (the tuple is replaced whole, so threads are safe)
        self._validity: tuple[object, bytes] = (None, b"")
        self._sans: dict[str, bytes] = {}

    @classmethod
    def for_issuer(cls, issuer_cert: x509.Certificate, issuer_key: PrivateKey,
                   fixed_extensions: list[tuple[x509.ExtensionType, bool, bool]]) -> LeafTemplate | None:
        if not isinstance(issuer_key, ec.EllipticCurvePrivateKey) or \
                not isinstance(issuer_key.curve, (ec.SECP256R1, ec.SECP384R1)):
            return None
        return cls(issuer_cert, issuer_key, fixed_extensions)

    def tbs(self, *, serial: int, not_before: _dt.datetime, not_after: _dt.datetime, spki_der: bytes,
            uri: str) -> bytes:
        san = self._sans.get(uri)
        if san is None:
            san = _extension(_OID_SAN, tlv(0x30, tlv(0x86, uri.encode("ascii"))), True)
            if len(self._sans) >= _SAN_CACHE:
                self._sans.clear()
            self._sans[uri] = san
        validity = self._validity
        if validity[0] != (not_before, not_after):
            validity = ((not_before, not_after), tlv(0x30, der_time(not_before) + der_time(not_after)))
            self._validity = validity
        ski = tlv(0x04, hashlib.sha1(spki_key_bits(spki_der)).digest())  # noqa: S324 - RFC 5280 method 1
        extensions = self._before_san + san + _extension(_OID_SKI, ski, False) + self._after_ski
        return tlv(0x30, _VERSION_3 + der_integer(serial) + self._alg + self._issuer
                   + validity[1] + _EMPTY_NAME + spki_der + tlv(0xA3, tlv(0x30, extensions)))

    def sign(self, tbs: bytes) -> bytes:
        """The certificate DER: TBS, algorithm, signature."""
        signature = self.issuer_key.sign(tbs, self._ecdsa)
        return tlv(0x30, tbs + self._alg + tlv(0x03, b"\x00" + signature))


def _fixed(value: x509.ExtensionType, critical: bool) -> bytes:
    return _extension(tlv(0x06, _oid_body(value.oid)), value.public_bytes(), critical)


def _oid_body(oid: x509.ObjectIdentifier) -> bytes:
    """The content octets of an OBJECT IDENTIFIER (X.690 §8.19)."""
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    out = bytearray((arcs[0] * 40 + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def spki_der_of(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
