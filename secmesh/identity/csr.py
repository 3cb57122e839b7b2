"""Certificate signing requests: build one for a SPIFFE ID, parse, verify, check the key type.

The agent builds CSRs here and the CA parses them here, so both ends agree on what a good CSR
is. The CA never trusts the CSR's SANs (the identity comes from the caller's token); it only
needs the CSR to prove possession of an acceptable key.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secmesh.errors import IdentityError
from secmesh.identity.keys import PrivateKey
from secmesh.identity.spiffe import SpiffeId

MIN_RSA_BITS = 2048
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
ACCEPTED_KEYS = "ECDSA P-256/P-384 or RSA >= 2048 bits"


class CsrError(IdentityError):
    """A CSR was refused; `reason` is one of `malformed_csr`, `bad_csr_signature`, `unsupported_key`."""

    reason = "malformed_csr"


def build_csr(key: PrivateKey, spiffe_id: SpiffeId | str) -> bytes:
    """A PEM CSR with an empty subject and the SPIFFE ID as its only (critical) URI SAN, as istio-agent sends."""
    sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))]), critical=True)
    algorithm = None if _is_ed(key) else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def _is_ed(key: object) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed25519, ed448

    return isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR (what arrives on the wire is a PEM string; files may be either)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if not raw.strip():
        raise CsrError("CSR is empty", reason="malformed_csr")
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(raw)
        return x509.load_der_x509_csr(raw)
    except ValueError as exc:
        raise CsrError(f"cannot parse CSR: {exc}", reason="malformed_csr") from None


def check_key_type(public_key: object) -> None:
    """Refuse keys the mesh does not want on leaf certificates (small RSA, odd curves, Edwards keys)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ACCEPTED_CURVES):
            return
        raise CsrError(f"unsupported EC curve {public_key.curve.name}; accepted: {ACCEPTED_KEYS}",
                       reason="unsupported_key")
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size >= MIN_RSA_BITS:
            return
        raise CsrError(f"RSA key of {public_key.key_size} bits is too small; accepted: {ACCEPTED_KEYS}",
                       reason="unsupported_key")
    raise CsrError(f"unsupported key type {type(public_key).__name__.lstrip('_')}; accepted: {ACCEPTED_KEYS}",
                   reason="unsupported_key")


def verify_csr(csr: x509.CertificateSigningRequest) -> object:
    """Check the CSR's key type, then its self-signature (proof of possession); returns the public key."""
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise CsrError(f"CSR public key unreadable: {exc}", reason="unsupported_key") from None
    check_key_type(public_key)
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # noqa: BLE001 - unusual algorithms raise instead of returning False
        raise CsrError(f"CSR signature cannot be checked: {exc}", reason="bad_csr_signature") from None
    if not valid:
        raise CsrError("CSR signature is invalid", reason="bad_csr_signature")
    return public_key


def parse_and_verify(data: bytes | str) -> x509.CertificateSigningRequest:
    """`load_csr` + `verify_csr`."""
    csr = load_csr(data)
    verify_csr(csr)
    return csr


def parse_verified_key(data: bytes | str) -> tuple[x509.CertificateSigningRequest, object]:
    """`load_csr` + `verify_csr`, returning the CSR and its (checked) public key: the CA's one call per request."""
    csr = load_csr(data)
    return csr, verify_csr(csr)


def csr_uri_sans(csr: x509.CertificateSigningRequest) -> list[str]:
    """The URI SANs the CSR asks for (informational only; the CA ignores them)."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)
