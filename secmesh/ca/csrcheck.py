"""The CA's CSR check: `identity.csr.parse_verified_key` with a cheaper ECDSA signature check.

`CertificateSigningRequest.is_signature_valid` costs ~84 µs per P-256 CSR; the same ECDSA
verification done with the CSR's own public key over its TBS bytes (`PublicKey.verify`) costs
~68 µs (measured on the 2-core box, `cryptography` 50). The verification is the same one:
the CSR's signature over `tbs_certrequest_bytes` with the CSR's key and the hash its signature
algorithm names. Only ECDSA-with-SHA-256/384 signatures by an accepted EC key take this path;
everything else (RSA, odd algorithms, mismatched key/algorithm) goes to `verify_csr`, which
keeps the reasons (`malformed_csr`, `unsupported_key`, `bad_csr_signature`) in one place, and
words the refusal when the fast check fails.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from secmesh.identity.csr import CsrError, check_key_type, load_csr, verify_csr

_ECDSA = {SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.ECDSA(hashes.SHA256()),
          SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.ECDSA(hashes.SHA384())}


def parse_verified_key(data: bytes | str) -> tuple[x509.CertificateSigningRequest, object]:
    """(CSR, its public key) once the key type is acceptable and the self-signature verifies."""
    csr = load_csr(data)
    algorithm = _ECDSA.get(csr.signature_algorithm_oid)
    if algorithm is None:
        return csr, verify_csr(csr)
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError):
        return csr, verify_csr(csr)  # raises with the usual reason
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return csr, verify_csr(csr)
    check_key_type(public_key)
    try:
        public_key.verify(csr.signature, csr.tbs_certrequest_bytes, algorithm)
    except Exception:  # noqa: BLE001 - refused: `verify_csr` names the reason (and words it) as always
        verify_csr(csr)
        raise CsrError("CSR signature is invalid") from None  # not reached: both run the same check
    return csr, public_key
