"""TLS material and contexts: validate what a source delivers, build SSLContexts, swap atomically.

A certificate source (SDS or files) hands over PEM bytes; `validate_material` refuses a key that
does not match its leaf (the caller keeps the last good material). `ContextHolder` builds one
server and one client context per material and swaps a single reference, so a handshake always
sees a complete pair of cert + trust bundle and existing connections keep the context they
were made with.

Pitfall P7: every server context we build is `CERT_REQUIRED` with the same minimum version,
because `verify_mode` is fixed by the context a handshake *starts* with; the `sni_callback`
only moves a handshake that started on an older context to the newest one.
"""

from __future__ import annotations

import datetime as _dt
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secmesh.errors import IdentityError
from secmesh.identity.bundle import load_pem_certificates
from secmesh.identity.keys import load_private_key_pem
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId, TrustDomain


@dataclass(frozen=True)
class CertMaterial:
    """A validated leaf chain + private key + trust bundle (PEM). Never logged: `key_pem` is secret."""

    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    spiffe_id: SpiffeId | None
    not_after: _dt.datetime
    roots_not_after: _dt.datetime
    fingerprint: str          # sha256 of the leaf, hex: identifies the material in logs and /certs

    def __repr__(self) -> str:  # keep the key out of any accidental repr/log
        return f"CertMaterial(id={self.spiffe_id}, not_after={self.not_after.isoformat()}, fp={self.fingerprint[:16]})"


def _spiffe_id_of(cert: x509.Certificate) -> SpiffeId | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId:
        return None


def check_leaf_key(chain_pem: bytes, key_pem: bytes, *, now: _dt.datetime) -> list[x509.Certificate]:
    """Chain parses, the key matches the leaf, the leaf has not expired; returns the chain."""
    chain = load_pem_certificates(chain_pem, what="certificate chain")
    if not chain:
        raise IdentityError("certificate chain is empty", reason="empty_chain")
    key = load_private_key_pem(key_pem)
    leaf = chain[0]
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != leaf.public_key().public_bytes(*fmt):
        raise IdentityError("private key does not match the leaf certificate", reason="key_mismatch")
    if leaf.not_valid_after_utc <= now:
        raise IdentityError(f"leaf certificate expired at {leaf.not_valid_after_utc.isoformat()}",
                            reason="expired")
    return chain


def validate_material(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes, *, now: _dt.datetime) -> CertMaterial:
    """Check a cert/key/bundle triple; raise IdentityError with a closed reason if it must be refused."""
    chain = check_leaf_key(chain_pem, key_pem, now=now)
    roots = load_pem_certificates(bundle_pem, what="trust bundle")
    if not roots:
        raise IdentityError("trust bundle is empty", reason="empty_bundle")
    leaf = chain[0]
    return CertMaterial(chain_pem, key_pem, bundle_pem, _spiffe_id_of(leaf), leaf.not_valid_after_utc,
                        min(r.not_valid_after_utc for r in roots), leaf.fingerprint(_sha256()).hex())


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _load_chain(ctx: ssl.SSLContext, material: CertMaterial) -> None:
    """`load_cert_chain` only reads files: write chain+key to a 0600 temp file, load it, remove it."""
    tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="secmesh-", suffix=".pem", dir=tmpdir)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(material.chain_pem.rstrip(b"\n") + b"\n" + material.key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def _common(ctx: ssl.SSLContext, material: CertMaterial, min_version: str, ciphers_tls12: str) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if min_version == "1.2":
        ctx.set_ciphers(ciphers_tls12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_chain(ctx, material)
    ctx.load_verify_locations(cadata=material.bundle_pem.decode("ascii"))


def build_server_context(material: CertMaterial, *, min_version: str = "1.3",
                         ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, material, min_version, ciphers_tls12)
    # No session tickets: every connection is verified against the *current* bundle, so a
    # peer of a rotated-out CA cannot come back by resumption; it also saves two ticket
    # encryptions per handshake.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def build_client_context(material: CertMaterial, *, min_version: str = "1.3",
                         ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False   # SPIFFE: the server's identity is its URI SAN, checked after the handshake
    _common(ctx, material, min_version, ciphers_tls12)
    return ctx


@dataclass(frozen=True)
class TlsState:
    material: CertMaterial
    server: ssl.SSLContext
    client: ssl.SSLContext
    version: int


class ContextHolder:
    """The newest TlsState behind one reference; `update` swaps it and notifies subscribers."""

    def __init__(self, *, min_version: str = "1.3", ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20") -> None:
        self._min_version = min_version
        self._ciphers = ciphers_tls12
        self.state: TlsState | None = None
        self._subscribers: list[Callable[[TlsState], None]] = []

    def subscribe(self, fn: Callable[[TlsState], None]) -> None:
        self._subscribers.append(fn)

    def update(self, material: CertMaterial) -> TlsState:
        server = build_server_context(material, min_version=self._min_version, ciphers_tls12=self._ciphers)
        client = build_client_context(material, min_version=self._min_version, ciphers_tls12=self._ciphers)
        server.sni_callback = self._to_newest
        version = self.state.version + 1 if self.state else 1
        self.state = TlsState(material, server, client, version)
        for fn in list(self._subscribers):
            fn(self.state)
        return self.state

    def _to_newest(self, sslobj: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> None:
        """Runs at ClientHello: a handshake that began on an older context finishes on the newest."""
        state = self.state
        if state is not None and ctx is not state.server:
            sslobj.context = state.server
        return None


# ---------------------------------------------------------------------------- peer identity


def peer_spiffe_id(peercert: dict[str, Any] | None, trust_domain: TrustDomain | None) -> SpiffeId:
    """The verified peer's SPIFFE ID from its URI SAN (exactly one), in the expected trust domain."""
    if not peercert:
        raise IdentityError("peer presented no certificate", reason="no_peer_cert")
    uris = [v for (t, v) in peercert.get("subjectAltName", ()) if t == "URI"]
    if len(uris) != 1:
        raise IdentityError(f"peer certificate carries {len(uris)} URI SANs, need exactly one",
                            reason="bad_peer_id")
    try:
        sid = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise IdentityError(f"peer URI SAN is not a SPIFFE ID: {exc}", reason="bad_peer_id") from None
    if sid.is_member_only:
        raise IdentityError("peer SPIFFE ID has no path", reason="bad_peer_id")
    if trust_domain is not None and sid.trust_domain != trust_domain:
        raise IdentityError(f"peer trust domain {sid.trust_domain} is not {trust_domain}",
                            reason="foreign_trust_domain")
    return sid


def classify_handshake_error(exc: BaseException) -> str:
    """A closed, low-cardinality reason for a failed handshake (metric label and log field)."""
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError) and "longer" in str(exc)):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = (exc.verify_message or "").lower()
        if "expired" in msg:
            return "cert_expired"
        if "not yet valid" in msg:
            return "cert_not_yet_valid"
        if "issuer" in msg or "self-signed" in msg or "self signed" in msg:
            return "unknown_ca"
        return "cert_verify_failed"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        table = {
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
            "CERTIFICATE_REQUIRED": "no_client_cert",
            "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_cert",
            "WRONG_VERSION_NUMBER": "not_tls",
            "HTTP_REQUEST": "not_tls",
            "HTTPS_PROXY_REQUEST": "not_tls",
            "UNSUPPORTED_PROTOCOL": "protocol_version",
            "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
            "NO_SHARED_CIPHER": "no_shared_cipher",
            "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
            "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
            "SSLV3_ALERT_CERTIFICATE_EXPIRED": "cert_expired",
            "TLSV1_ALERT_DECRYPT_ERROR": "decrypt_error",
        }
        return table.get(reason, "tls_error")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    return "error"
