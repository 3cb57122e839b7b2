"""Pure certificate building: roots, intermediates and leaf SVIDs, with `now` passed in.

The leaf profile is Istio's (`security/pkg/pki/util/generate_cert.go`): NotBefore backdated 2
minutes for clock skew, NotAfter clamped to the issuer's, KU digitalSignature+keyEncipherment
(critical), EKU serverAuth+clientAuth, CA=false, empty subject with a **critical** URI SAN (the
SPIFFE ID taken from the caller's validated token, never the CSR), SKI/AKI and a random
positive serial. The signing path is kept free of I/O so the service can time and test it alone.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmesh.ca.config import CLOCK_SKEW, format_ttl
from secmesh.ca.leafder import LeafTemplate, pem_certificate, spki_der_of
from secmesh.errors import CAError
from secmesh.identity.keys import PrivateKey
from secmesh.identity.spiffe import SpiffeId, TrustDomain

SerialSource = Callable[[], int]

# the constant part of the leaf profile, built once (the sign path is hot)
LEAF_KEY_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                               data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                               encipher_only=False, decipher_only=False)
LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_EMPTY_NAME = x509.Name([])


def random_serial() -> int:
    """A random positive serial of up to 127 bits (RFC 5280: ≤ 20 octets, positive, unpredictable)."""
    while True:
        serial = int.from_bytes(os.urandom(16), "big") >> 1
        if serial:
            return serial


def serial_hex(serial: int) -> str:
    """The serial as lower-case hex (what `ca list`, `ca revoke` and openssl show, minus colons)."""
    return format(serial, "x")


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
    if hasattr(key, "key_size"):
        return hashes.SHA256()
    return None  # Ed25519 takes no hash


def _ca_name(trust_domain: TrustDomain, common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain.name),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_builder(trust_domain: TrustDomain, subject: x509.Name, issuer: x509.Name, public_key: object,
                not_before: _dt.datetime, not_after: _dt.datetime, path_length: int) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(random_serial())  # type: ignore[arg-type]
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            # a signing certificate may carry the trust domain's own ID (no path), per X509-SVID §4
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]),
                           critical=False))


def build_root(trust_domain: TrustDomain, key: PrivateKey, *, now: _dt.datetime, ttl: _dt.timedelta,
               generation: int = 1) -> x509.Certificate:
    """A self-signed root (pathlen 1: it signs intermediates, which sign leaves)."""
    name = _ca_name(trust_domain, f"secmesh root CA G{generation}")
    builder = _ca_builder(trust_domain, name, name, key.public_key(), now - CLOCK_SKEW, now + ttl, 1)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)  # type: ignore[arg-type]
    return builder.sign(key, _hash_for(key))  # type: ignore[arg-type]


def build_intermediate(trust_domain: TrustDomain, key: PrivateKey, *, root_cert: x509.Certificate,
                       root_key: PrivateKey, now: _dt.datetime, ttl: _dt.timedelta,
                       generation: int = 1) -> x509.Certificate:
    """The CA that signs leaves (pathlen 0), valid no longer than its root."""
    name = _ca_name(trust_domain, f"secmesh intermediate CA G{generation}")
    not_after = min(now + ttl, root_cert.not_valid_after_utc)
    builder = _ca_builder(trust_domain, name, root_cert.subject, key.public_key(), now - CLOCK_SKEW, not_after, 0)
    builder = builder.add_extension(_aki(root_cert), critical=False)
    return builder.sign(root_key, _hash_for(root_key))  # type: ignore[arg-type]


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


@dataclass(frozen=True)
class TtlPolicy:
    """Istio's TTL rule: ≤ 0 means the default; more than the max is refused, not silently cut."""

    default: _dt.timedelta
    maximum: _dt.timedelta

    def resolve(self, requested_seconds: int | float) -> _dt.timedelta:
        if requested_seconds <= 0:
            return self.default
        requested = _dt.timedelta(seconds=requested_seconds)
        if requested > self.maximum:
            raise CAError(f"requested TTL {format_ttl(requested)} is greater than the max allowed TTL "
                          f"{format_ttl(self.maximum)}", reason="ttl_too_long")
        return requested


def leaf_builder(public_key: object, spiffe_id: SpiffeId, *, issuer_cert: x509.Certificate,
                 issuer_aki: x509.AuthorityKeyIdentifier, now: _dt.datetime, ttl: _dt.timedelta,
                 serial: int, extra_sans: Sequence[x509.GeneralName] = ()) -> x509.CertificateBuilder:
    """The Istio leaf profile; `extra_sans` is only used for the CA's own serving cert (DNS/IP)."""
    not_after = min(now + ttl, issuer_cert.not_valid_after_utc)
    if not_after <= now:
        raise CAError("the issuing CA has expired; run `secmesh ca rotate`", reason="ca_expired")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id)), *extra_sans]
    return (x509.CertificateBuilder().subject_name(_EMPTY_NAME).issuer_name(issuer_cert.subject)
            .public_key(public_key).serial_number(serial)  # type: ignore[arg-type]
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(LEAF_KEY_USAGE, critical=True)
            .add_extension(LEAF_EKU, critical=False)
            .add_extension(LEAF_BASIC_CONSTRAINTS, critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(issuer_aki, critical=False))


@dataclass(frozen=True)
class Issued:
    """One signed leaf plus what the ledger and the response need, computed once."""

    der: bytes
    serial: int
    spiffe_id: SpiffeId
    not_before: _dt.datetime
    not_after: _dt.datetime
    leaf_pem: str

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)

    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        """Parsed on demand only: the serving path never needs the object, just the PEM."""
        return x509.load_der_x509_certificate(self.der)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Signer:
    """Signs leaves with one issuing CA; the PEM chain strings of the response are precomputed.

    Leaves for workloads go through `LeafTemplate` (DER concatenation + one ECDSA signature)
    when the issuer key is ECDSA; the builder remains for other keys and for the CA's own
    serving certificate (extra DNS/IP SANs). Both produce the same bytes for the same inputs.
    """

    def __init__(self, issuer_cert: x509.Certificate, issuer_key: PrivateKey, *,
                 intermediates: Sequence[x509.Certificate] = (), root: x509.Certificate,
                 ttl: TtlPolicy, serials: SerialSource = random_serial,
                 bundle_roots: Sequence[x509.Certificate] = ()) -> None:
        self.issuer_cert = issuer_cert
        self.issuer_key = issuer_key
        self.root = root
        self.ttl = ttl
        self._serials = serials
        self._hash = _hash_for(issuer_key)
        self._aki = _aki(issuer_cert)
        self._issuer_not_after = issuer_cert.not_valid_after_utc
        self._template = LeafTemplate.for_issuer(issuer_cert, issuer_key, [
            (LEAF_KEY_USAGE, True, True), (LEAF_EKU, False, True), (LEAF_BASIC_CONSTRAINTS, True, True),
            (self._aki, False, False)])
        # leaf first, then the issuing CA and its parents, then the roots; each string ends in "\n" as
        # istiod's do. The last element is the whole trust bundle in one string (istiod sends its
        # combined root PEM there during a root rotation), so holders keep trusting the old root.
        roots_pem = "".join(_pem(r) for r in bundle_roots) if bundle_roots else _pem(root)
        self.chain_tail: tuple[str, ...] = (*(_pem(c) for c in (issuer_cert, *intermediates)), roots_pem)

    def sign(self, public_key: object, spiffe_id: SpiffeId, *, now: _dt.datetime, ttl: _dt.timedelta,
             extra_sans: Sequence[x509.GeneralName] = (), spki_der: bytes | None = None) -> Issued:
        serial = self._serials()
        if self._template is None or extra_sans:
            builder = leaf_builder(public_key, spiffe_id, issuer_cert=self.issuer_cert, issuer_aki=self._aki,
                                   now=now, ttl=ttl, serial=serial, extra_sans=extra_sans)
            cert = builder.sign(self.issuer_key, self._hash)  # type: ignore[arg-type]
            return Issued(cert.public_bytes(serialization.Encoding.DER), serial, spiffe_id,
                          cert.not_valid_before_utc, cert.not_valid_after_utc, _pem(cert))
        not_after = min(now + ttl, self._issuer_not_after)
        if not_after <= now:
            raise CAError("the issuing CA has expired; run `secmesh ca rotate`", reason="ca_expired")
        not_before = (now - CLOCK_SKEW).replace(microsecond=0)
        not_after = not_after.replace(microsecond=0)
        tbs = self._template.tbs(serial=serial, not_before=not_before, not_after=not_after,
                                 spki_der=spki_der or spki_der_of(public_key), uri=str(spiffe_id))
        der = self._template.sign(tbs)
        return Issued(der, serial, spiffe_id, not_before, not_after, pem_certificate(der))

    def sign_csr(self, csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId, *, now: _dt.datetime,
                 requested_ttl_seconds: int | float, public_key: object | None = None) -> Issued:
        """The whole CA decision for one request (CSR already verified): TTL rule, then sign.

        `public_key` saves re-extracting the key the CSR check already extracted (hot path).
        """
        ttl = self.ttl.resolve(requested_ttl_seconds)
        return self.sign(public_key if public_key is not None else csr.public_key(), spiffe_id, now=now, ttl=ttl)

    def chain(self, issued: Issued) -> list[str]:
        return [issued.leaf_pem, *self.chain_tail]
