"""`ca.csrcheck.parse_verified_key` (the CA's faster ECDSA check) decides exactly as `identity.csr` does."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secmesh.ca import csrcheck
from secmesh.identity import csr as identity_csr
from secmesh.identity.csr import CsrError, build_csr
from secmesh.identity.keys import generate_p256

SID = "spiffe://example.org/ns/a/sa/b"


def _csr_with(key, algorithm=hashes.SHA256()) -> bytes:
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .sign(key, algorithm).public_bytes(serialization.Encoding.PEM))


def _tampered(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # a bit inside the signature's INTEGER: still DER, no longer a valid signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


CASES = {
    "p256": lambda: build_csr(generate_p256(), SID),
    "p384-sha384": lambda: _csr_with(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    "p256-sha512": lambda: _csr_with(ec.generate_private_key(ec.SECP256R1()), hashes.SHA512()),  # not the fast path
    "rsa2048": lambda: _csr_with(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "p256-tampered": lambda: _tampered(build_csr(generate_p256(), SID)),
    "p384-tampered": lambda: _tampered(_csr_with(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())),
    "rsa2048-tampered": lambda: _tampered(_csr_with(rsa.generate_private_key(public_exponent=65537, key_size=2048))),
    "p521": lambda: _csr_with(ec.generate_private_key(ec.SECP521R1()), hashes.SHA512()),
    "secp256k1": lambda: _csr_with(ec.generate_private_key(ec.SECP256K1())),
    "rsa1024": lambda: _csr_with(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
    "ed25519": lambda: _csr_with(ed25519.Ed25519PrivateKey.generate(), None),
    "empty": lambda: b"",
    "garbage": lambda: b"hello",
    "bad-pem": lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
}


def _outcome(check, data: bytes) -> str:
    try:
        _, key = check(data)
    except CsrError as exc:
        return exc.reason
    return "ok:" + key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                    serialization.PublicFormat.SubjectPublicKeyInfo).hex()


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_decision_as_identity_csr(case: str) -> None:
    data = CASES[case]()
    ours = _outcome(csrcheck.parse_verified_key, data)
    assert ours == _outcome(identity_csr.parse_verified_key, data)
    assert _outcome(csrcheck.parse_verified_key, data.decode()) == ours  # the wire carries a str
    expected = {"tampered": "bad_csr_signature", "p521": "unsupported_key", "secp256k1": "unsupported_key",
                "rsa1024": "unsupported_key", "ed25519": "unsupported_key", "empty": "malformed_csr",
                "garbage": "malformed_csr", "bad-pem": "malformed_csr"}
    want = next((reason for suffix, reason in expected.items() if case.endswith(suffix)), "ok")
    assert ours.split(":")[0] == want
