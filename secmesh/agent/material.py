"""Key + certificate chain for one identity, checked once and encoded once.

A `Material` is immutable and only ever replaced whole, so a reader can never see a new
certificate next to an old key (istio #33293). Every encoding SDS and the Workload API need
(PEM and DER chain, PKCS#8 key, roots) is computed here once per issuance instead of once per
stream: with 1,000 streams on one identity a rotation costs one encode, not a thousand.

`build_material` is where the CA's answer is distrusted: it must carry our key, our SPIFFE ID
and a valid leaf, whatever the CA thought it was doing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secmesh.errors import CAError
from secmesh.identity.bundle import certificates_pem
from secmesh.identity.keys import PrivateKey, private_key_der, private_key_pem
from secmesh.identity.spiffe import SpiffeId
from secmesh.identity.x509svid import SvidError, check_leaf


def _der(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True, eq=False)
class Material:
    """One identity's private key and certificate chain (leaf first, no root) and encodings."""

    spiffe_id: SpiffeId
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]       # roots the CA returned with this chain
    created_at: dt.datetime                   # when the agent received it (Istio's CreatedTime)
    version: int = 0                          # set by SecretCache.put; increases per identity
    chain_pem: bytes = field(default=b"", repr=False)
    chain_der: bytes = field(default=b"", repr=False)
    key_pem: bytes = field(default=b"", repr=False)
    key_der: bytes = field(default=b"", repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial_hex(self) -> str:
        return format(self.leaf.serial_number, "x")

    def expired(self, now: dt.datetime) -> bool:
        return _utc(now) >= self.not_after

    def seconds_left(self, now: dt.datetime) -> float:
        return (self.not_after - _utc(now)).total_seconds()

    def with_version(self, version: int) -> Material:
        return Material(self.spiffe_id, self.key, self.chain, self.roots, self.created_at, version,
                        self.chain_pem, self.chain_der, self.key_pem, self.key_der)


def parse_chain(cert_chain: Sequence[str | bytes]) -> list[x509.Certificate]:
    """The CA's `cert_chain` (one PEM per element, possibly several certs in one element) → certificates."""
    certs: list[x509.Certificate] = []
    for element in cert_chain:
        data = element.encode() if isinstance(element, str) else bytes(element)
        try:
            certs.extend(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise CAError(f"CA returned an unreadable certificate: {exc}", reason="bad_response") from None
    return certs


def build_material(spiffe_id: SpiffeId, key: PrivateKey, cert_chain: Sequence[str | bytes],
                   now: dt.datetime) -> Material:
    """Check the CA's answer against what we asked for and package it.

    Refused (CAError `bad_response`): fewer than two certificates (istio-agent refuses those too),
    a leaf that is not a valid X.509-SVID, a leaf for another SPIFFE ID, a leaf whose public key
    is not ours, a leaf already expired or not yet valid at `now`.
    """
    certs = parse_chain(cert_chain)
    if len(certs) < 2:
        raise CAError(f"CA returned {len(certs)} certificate(s); expected leaf, intermediates and root",
                      reason="bad_response")
    leaf = certs[0]
    try:
        got = check_leaf(leaf)
    except SvidError as exc:
        raise CAError(f"CA returned an invalid leaf: {exc.message}", reason="bad_response") from None
    if got != spiffe_id:
        raise CAError(f"CA returned a certificate for {got}, asked for {spiffe_id}", reason="bad_response")
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != theirs:
        raise CAError("CA returned a certificate for a different public key", reason="bad_response")
    now = _utc(now)
    if now >= leaf.not_valid_after_utc:
        raise CAError("CA returned an expired certificate", reason="bad_response")
    if now + dt.timedelta(minutes=5) < leaf.not_valid_before_utc:
        raise CAError("CA returned a certificate that is not valid yet (clock skew?)", reason="bad_response")
    roots = tuple(c for c in certs[1:] if _is_self_signed(c))
    chain = tuple(c for c in certs if not (_is_self_signed(c) and c is not leaf))
    return Material(spiffe_id=spiffe_id, key=key, chain=chain, roots=roots, created_at=now,
                    chain_pem=certificates_pem(chain), chain_der=_der(chain),
                    key_pem=private_key_pem(key), key_der=private_key_der(key))


@dataclass(frozen=True, eq=False)
class Roots:
    """The trust anchors served as `ROOTCA` and as the Workload API bundle; replaced whole."""

    certs: tuple[x509.Certificate, ...] = ()
    version: int = 0
    pem: bytes = field(default=b"", repr=False)
    der: bytes = field(default=b"", repr=False)

    @classmethod
    def of(cls, certs: Sequence[x509.Certificate], version: int = 0) -> Roots:
        return cls(tuple(certs), version, certificates_pem(list(certs)), _der(certs))

    def earliest_expiry(self) -> dt.datetime | None:
        return min((c.not_valid_after_utc for c in self.certs), default=None)


def merge_roots(*groups: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Ordered union by DER (first occurrence wins); bundles of one trust domain, never mixed across domains."""
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for group in groups:
        for cert in group:
            der = cert.public_bytes(serialization.Encoding.DER)
            if der not in seen:
                seen.add(der)
                out.append(cert)
    return tuple(out)
