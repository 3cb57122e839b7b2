"""CSR building and the CA's refusal cases: malformed, badly signed, unsupported key types."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secmesh.identity.csr import (CsrError, build_csr, csr_uri_sans, load_csr, parse_and_verify,
                                  parse_verified_key)
from secmesh.identity.keys import generate_p256

SID = "spiffe://example.org/ns/a/sa/b"


def test_build_csr_has_empty_subject_and_critical_uri_san() -> None:
    pem = build_csr(generate_p256(), SID)
    csr = parse_and_verify(pem)
    assert csr.subject == x509.Name([])
    ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ext.critical and csr_uri_sans(csr) == [SID]


def test_pem_and_der_both_parse() -> None:
    pem = build_csr(generate_p256(), SID)
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert load_csr(der).public_bytes(serialization.Encoding.PEM) == pem
    assert load_csr(pem.decode()).is_signature_valid


def _csr_with(key, algorithm=hashes.SHA256()) -> bytes:
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .sign(key, algorithm).public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("key", [
    pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="p256"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
    pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="rsa2048"),
])
def test_accepted_keys(key) -> None:
    _, public_key = parse_verified_key(_csr_with(key()))
    assert public_key is not None


@pytest.mark.parametrize("key, algorithm", [
    pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), hashes.SHA512(), id="p521"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), hashes.SHA256(), id="secp256k1"),
    pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), hashes.SHA256(),
                 id="rsa1024"),
    pytest.param(lambda: ed25519.Ed25519PrivateKey.generate(), None, id="ed25519"),
])
def test_unsupported_keys_are_refused(key, algorithm) -> None:
    with pytest.raises(CsrError) as err:
        parse_and_verify(_csr_with(key(), algorithm))
    assert err.value.reason == "unsupported_key"


@pytest.mark.parametrize("data", ["", "   ", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                                  b"\x30\x03\x02\x01\x00", "hello"])
def test_malformed_csrs(data) -> None:
    with pytest.raises(CsrError) as err:
        parse_and_verify(data)
    assert err.value.reason == "malformed_csr"


def test_badly_signed_csr_is_refused() -> None:
    der = bytearray(x509.load_pem_x509_csr(build_csr(generate_p256(), SID)).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # flip a bit inside the signature value
    try:
        csr = load_csr(bytes(der))
    except CsrError:
        pytest.skip("corruption made the DER unparseable")
    with pytest.raises(CsrError) as err:
        parse_and_verify(csr.public_bytes(serialization.Encoding.PEM))
    assert err.value.reason == "bad_csr_signature"
