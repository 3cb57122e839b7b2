"""The DER template path signs exactly what `CertificateBuilder` would: same TBS bytes, same PEM."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secmesh.ca.leafder import der_integer, pem_certificate, spki_key_bits
from secmesh.ca.signer import Signer, TtlPolicy, build_intermediate, build_root, leaf_builder
from secmesh.identity.spiffe import SpiffeId, TrustDomain

TD = TrustDomain.parse("example.org")
TTL = TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=90))
NOW = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.timezone.utc)


def _ca(curve: ec.EllipticCurve, *, now: dt.datetime = NOW, days: int = 3650) -> tuple[x509.Certificate, object,
                                                                                         x509.Certificate]:
    root_key, inter_key = ec.generate_private_key(curve), ec.generate_private_key(curve)
    root = build_root(TD, root_key, now=now, ttl=dt.timedelta(days=days))
    inter = build_intermediate(TD, inter_key, root_cert=root, root_key=root_key, now=now, ttl=dt.timedelta(days=days))
    return inter, inter_key, root


def _builder_tbs(signer: Signer, public_key: object, sid: SpiffeId, serial: int, now: dt.datetime,
                 ttl: dt.timedelta) -> bytes:
    cert = leaf_builder(public_key, sid, issuer_cert=signer.issuer_cert, issuer_aki=signer._aki, now=now, ttl=ttl,
                        serial=serial).sign(signer.issuer_key, signer._hash)  # type: ignore[arg-type]
    return cert.tbs_certificate_bytes


SUBJECT_KEYS = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
}


@pytest.mark.parametrize("issuer_curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["p256", "p384"])
@pytest.mark.parametrize("key_kind", sorted(SUBJECT_KEYS))
@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF00, 2**126 + 12345, 2**127 - 1])
def test_template_tbs_is_byte_identical_to_the_builder(issuer_curve: ec.EllipticCurve, key_kind: str,
                                                       serial: int) -> None:
    inter, key, root = _ca(issuer_curve)
    signer = Signer(inter, key, root=root, ttl=TTL, serials=lambda: serial)  # type: ignore[arg-type]
    public_key = SUBJECT_KEYS[key_kind]()
    sid = SpiffeId.parse("spiffe://example.org/ns/" + "n" * 40 + "/sa/" + "s" * 60)  # long URI: 2-byte lengths
    issued = signer.sign(public_key, sid, now=NOW, ttl=dt.timedelta(hours=5))
    cert = issued.certificate
    assert cert.tbs_certificate_bytes == _builder_tbs(signer, public_key, sid, serial, NOW, dt.timedelta(hours=5))
    assert issued.leaf_pem == cert.public_bytes(serialization.Encoding.PEM).decode()
    assert (issued.not_before, issued.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    cert.verify_directly_issued_by(inter)
    expected_hash = hashes.SHA384 if isinstance(issuer_curve, ec.SECP384R1) else hashes.SHA256
    assert isinstance(cert.signature_hash_algorithm, expected_hash)


def test_generalized_time_after_2049_and_clamp_to_the_issuer() -> None:
    late = dt.datetime(2049, 12, 31, 23, 0, tzinfo=dt.timezone.utc)
    inter, key, root = _ca(ec.SECP256R1(), now=late - dt.timedelta(days=1), days=30)
    signer = Signer(inter, key, root=root, ttl=TTL, serials=lambda: 42)  # type: ignore[arg-type]
    public_key = SUBJECT_KEYS["p256"]()
    sid = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
    for ttl in (dt.timedelta(hours=2), dt.timedelta(days=60)):  # crosses 2050; then clamped to the issuer
        issued = signer.sign(public_key, sid, now=late, ttl=ttl)
        assert issued.certificate.tbs_certificate_bytes == _builder_tbs(signer, public_key, sid, 42, late, ttl)
    assert issued.not_after == inter.not_valid_after_utc


def test_non_ecdsa_issuer_falls_back_to_the_builder() -> None:
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = build_root(TD, root_key, now=NOW, ttl=dt.timedelta(days=10))
    signer = Signer(root, root_key, root=root, ttl=TTL)
    assert signer._template is None
    issued = signer.sign(SUBJECT_KEYS["p256"](), SpiffeId.parse("spiffe://example.org/ns/a/sa/b"), now=NOW,
                         ttl=dt.timedelta(hours=1))
    issued.certificate.verify_directly_issued_by(root)


def test_der_helpers() -> None:
    assert der_integer(0) == b"\x02\x01\x00"
    assert der_integer(0x80) == b"\x02\x02\x00\x80"
    key = SUBJECT_KEYS["p256"]()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki_key_bits(spki) == key.public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
    inter, _, _ = _ca(ec.SECP256R1())
    assert pem_certificate(inter.public_bytes(serialization.Encoding.DER)) == \
        inter.public_bytes(serialization.Encoding.PEM).decode()


def test_reused_encodings_follow_every_change_of_time_and_identity() -> None:
    """The template remembers the last validity and the SAN of each SPIFFE ID: a change must never reuse them."""
    inter, key, root = _ca(ec.SECP256R1())
    signer = Signer(inter, key, root=root, ttl=TTL, serials=lambda: 7)  # type: ignore[arg-type]
    public_key = SUBJECT_KEYS["p256"]()
    sids = [SpiffeId.parse(f"spiffe://example.org/ns/a/sa/{name}") for name in ("x", "y", "x")]
    moments = [NOW, NOW, NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=1), NOW]
    for i, now in enumerate(moments):
        for ttl in (dt.timedelta(hours=1), dt.timedelta(hours=1), dt.timedelta(hours=2)):
            sid = sids[i % len(sids)]
            issued = signer.sign(public_key, sid, now=now, ttl=ttl)
            assert issued.certificate.tbs_certificate_bytes == _builder_tbs(signer, public_key, sid, 7, now, ttl)
