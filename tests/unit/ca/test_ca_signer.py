"""The leaf profile Istio issues, the TTL rule, and the CA certificates' shape."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from secmesh.ca.signer import Signer, TtlPolicy, random_serial
from secmesh.ca.store import CaMaterial
from secmesh.clock import FakeClock
from secmesh.errors import CAError
from secmesh.identity.csr import build_csr, parse_and_verify
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import SpiffeId

SID = SpiffeId.parse("spiffe://example.org/ns/payments/sa/api")


def _issue(signer: Signer, clock: FakeClock, ttl_seconds: int = 3600, csr_id: str = "spiffe://evil.org/ns/x/sa/y"):
    csr = parse_and_verify(build_csr(generate_p256(), csr_id))
    return signer.sign_csr(csr, SID, now=clock.now(), requested_ttl_seconds=ttl_seconds)


def test_leaf_profile_matches_istio(signer: Signer, clock: FakeClock) -> None:
    issued = _issue(signer, clock)
    cert = issued.certificate
    assert cert.subject == x509.Name([])
    assert cert.not_valid_before_utc == clock.now() - dt.timedelta(minutes=2)
    assert cert.not_valid_after_utc == clock.now() + dt.timedelta(hours=1)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    # the identity is the token's, never the CSR's (which asked for spiffe://evil.org/…)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(SID)]
    assert len(list(san.value)) == 1
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = signer.issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    assert cert.issuer == signer.issuer_cert.subject
    assert 0 < cert.serial_number < 2**127 and issued.serial_hex == format(cert.serial_number, "x")
    cert.verify_directly_issued_by(signer.issuer_cert)


def test_chain_is_leaf_intermediate_root_each_ending_in_newline(signer: Signer, clock: FakeClock,
                                                                 material: CaMaterial) -> None:
    chain = signer.chain(_issue(signer, clock))
    assert len(chain) == 3 and all(c.endswith("\n") for c in chain)
    certs = [x509.load_pem_x509_certificate(c.encode()) for c in chain]
    assert certs[1] == material.current.intermediate_cert and certs[2] == material.current.root_cert


@pytest.mark.parametrize("requested, expected", [(0, dt.timedelta(hours=24)), (-5, dt.timedelta(hours=24)),
                                                 (600, dt.timedelta(minutes=10)),
                                                 (90 * 86400, dt.timedelta(days=90))])
def test_ttl_rule(requested: int, expected: dt.timedelta) -> None:
    assert TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=90)).resolve(requested) == expected


def test_ttl_over_max_is_refused_with_istios_message() -> None:
    with pytest.raises(CAError) as err:
        TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=90)).resolve(91 * 86400)
    assert err.value.reason == "ttl_too_long"
    assert err.value.message == "requested TTL 91d is greater than the max allowed TTL 90d"


def test_not_after_is_clamped_to_the_issuer(material: CaMaterial, clock: FakeClock) -> None:
    gen = material.current
    signer = Signer(gen.intermediate_cert, gen.intermediate_key, root=gen.root_cert,
                    ttl=TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=36500)))
    issued = _issue(signer, clock, ttl_seconds=36000 * 86400)
    assert issued.not_after == gen.intermediate_cert.not_valid_after_utc
    clock.advance(gen.intermediate_cert.not_valid_after_utc - clock.now() + dt.timedelta(seconds=1))
    with pytest.raises(CAError, match="expired"):
        _issue(signer, clock)


def test_ca_certificates(material: CaMaterial) -> None:
    root, inter = material.current.root_cert, material.current.intermediate_cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    inter_bc = inter.extensions.get_extension_for_class(x509.BasicConstraints)
    assert inter_bc.critical and inter_bc.value.ca and inter_bc.value.path_length == 0
    ku = inter.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    san = inter.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert inter.not_valid_after_utc <= root.not_valid_after_utc
    inter.verify_directly_issued_by(root)
    assert material.current.root_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_serials_are_random_and_positive() -> None:
    serials = {random_serial() for _ in range(200)}
    assert len(serials) == 200 and all(s > 0 for s in serials)


def test_leaf_passes_x509_verification_as_client_cert(signer: Signer, clock: FakeClock,
                                                      material: CaMaterial) -> None:
    from cryptography.x509.verification import PolicyBuilder, Store

    issued = _issue(signer, clock)
    verifier = (PolicyBuilder().store(Store([material.current.root_cert])).time(clock.now())
                .build_client_verifier())
    verified = verifier.verify(issued.certificate, [material.current.intermediate_cert])
    assert verified.subjects == [x509.UniformResourceIdentifier(str(SID))]
