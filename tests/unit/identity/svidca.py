"""A tiny in-memory SPIFFE CA for tests: it can mint good X.509-SVIDs and every kind of bad one.

Each knob maps to one X509-SVID rule, so a test reads as "a leaf whose key usage lacks
digitalSignature" rather than forty lines of builder calls. Nothing here is used by secmesh itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)

_LEAF_KU: dict[str, bool] = dict(digital_signature=True, content_commitment=False, key_encipherment=True,
                                 data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                 crl_sign=False, encipher_only=False, decipher_only=False)
_CA_KU: dict[str, bool] = {**_LEAF_KU, "digital_signature": False, "key_encipherment": False,
                           "key_cert_sign": True, "crl_sign": True}

_KEEP = object()  # "use the default" marker for keyword knobs whose None means "omit"


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _ski(key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


@dataclass
class Authority:
    """A signing certificate and its key (a root when `issuer` is None)."""

    cert: x509.Certificate
    key: Any
    issuer: Authority | None = None

    @property
    def chain_up(self) -> list[x509.Certificate]:
        """This cert and its intermediates up to (not including) the root, as a peer would send them."""
        out: list[x509.Certificate] = []
        node: Authority | None = self
        while node is not None and node.issuer is not None:
            out.append(node.cert)
            node = node.issuer
        return out

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: x509.Name, issuer_name: x509.Name, public_key: Any, not_before: dt.datetime,
             not_after: dt.datetime, serial: int | None) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(public_key)
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after))


def make_root(trust_domain: str = "example.org", *, key: Any = None, uri: str | None | object = _KEEP,
              not_before: dt.datetime = NOW - 30 * DAY, not_after: dt.datetime = NOW + 3650 * DAY) -> Authority:
    key = key or ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"root {trust_domain}")])
    uri_value = f"spiffe://{trust_domain}" if uri is _KEEP else uri
    b = (_builder(name, name, key.public_key(), not_before, not_after, None)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(**_CA_KU), critical=True)
         .add_extension(_ski(key), critical=False))
    if uri_value:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(uri_value))]),
                            critical=False)
    return Authority(b.sign(key, hashes.SHA256()), key)


def make_intermediate(parent: Authority, trust_domain: str = "example.org", *, key: Any = None,
                      uri: str | None | object = _KEEP, ca: bool = True, key_cert_sign: bool = True,
                      not_before: dt.datetime = NOW - 10 * DAY,
                      not_after: dt.datetime = NOW + 365 * DAY) -> Authority:
    key = key or ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"intermediate {trust_domain} {id(key):x}")])
    uri_value = f"spiffe://{trust_domain}" if uri is _KEEP else uri
    ku = {**_CA_KU, "key_cert_sign": key_cert_sign, "digital_signature": not key_cert_sign}
    b = (_builder(name, parent.cert.subject, key.public_key(), not_before, not_after, None)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(**ku), critical=True)
         .add_extension(_ski(key), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                        critical=False))
    if uri_value:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(uri_value))]),
                            critical=False)
    return Authority(b.sign(parent.key, hashes.SHA256()), key, parent)


@dataclass
class Leaf:
    cert: x509.Certificate
    key: Any
    issuer: Authority
    chain: list[x509.Certificate] = field(default_factory=list)  # leaf first, then intermediates

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def make_leaf(issuer: Authority, spiffe_id: str = "spiffe://example.org/ns/default/sa/web", *,
              key: Any = None, uris: Sequence[str] | None = None, dns: Sequence[str] = (),
              ca: bool | None = False, key_usage: dict[str, bool] | None | object = _KEEP,
              key_usage_critical: bool = True,
              eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH),
              subject: x509.Name | None = None, san_critical: bool = True,
              not_before: dt.datetime = NOW - dt.timedelta(minutes=2),
              not_after: dt.datetime = NOW + DAY) -> Leaf:
    """An X.509-SVID like Istio's: empty subject, critical SAN, KU digitalSignature|keyEncipherment."""
    key = key or ec_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u)
                                     for u in (uris if uris is not None else [spiffe_id])]
    names += [x509.DNSName(d) for d in dns]
    b = _builder(subject or x509.Name([]), issuer.cert.subject, key.public_key(), not_before, not_after, None)
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    ku = _LEAF_KU if key_usage is _KEEP else key_usage
    if ku is not None:
        b = b.add_extension(x509.KeyUsage(**{**_LEAF_KU, **ku}), critical=key_usage_critical)  # type: ignore[arg-type]
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                        critical=False)
    cert = b.sign(issuer.key, hashes.SHA256())
    return Leaf(cert, key, issuer, [cert, *issuer.chain_up])


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
