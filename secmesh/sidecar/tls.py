"""TLS material and contexts: validate what a source delivers, build SSLContexts, swap atomically.

A certificate source (SDS or files) hands over PEM bytes; `validate_material` refuses a key that
does not match its leaf (the caller keeps the last good material). `ContextHolder` builds one
server and one client context per material and swaps a single reference, so a handshake always
sees a complete pair of cert + trust bundle and existing connections keep the context they
were made with.

Pitfall P7: every server context we build is `CERT_REQUIRED` with the same minimum version,
because `verify_mode` is fixed by the context a handshake *starts* with; the `sni_callback`
only moves a handshake that started on an older context to the newest one.

Session resumption (TLS 1.3 tickets, on unless `tls.session_resumption: false`): a full mTLS
handshake costs ~1.4 ms of CPU across the two sidecars, a resumed one ~0.9 ms, and a burst
of new connections (a client opening its pool) is where the tail latency comes from. What
keeps it as safe as a full handshake:
- ticket keys belong to one server context, and each certificate/bundle update builds a new
  one, so after a rotation every peer goes through a full handshake against the new bundle;
- the client side keeps one session per outbound listener and per certificate version
  (`SessionSlot`), so it never resumes across a rotation either;
- a resumed session still carries the peer certificate: its SPIFFE ID is checked and
  authorized per connection as always, and `check_resumed_peer` refuses a resumed session
  whose peer certificate has expired since (resumption skips the validity check).
"""

from __future__ import annotations

import datetime as _dt
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from secmesh.errors import IdentityError
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId, TrustDomain
from secmesh.sidecar.certinfo import NO_PASSWORD, CertInfo, certificates, check_key_matches, private_file


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


def _spiffe_id_of(cert: CertInfo) -> SpiffeId | None:
    if len(cert.uris) != 1:
        return None
    try:
        return SpiffeId.parse(cert.uris[0])
    except InvalidSpiffeId:
        return None


def check_leaf_key(chain_pem: bytes, key_pem: bytes, *, now: _dt.datetime) -> list[CertInfo]:
    """Chain parses, the key matches the leaf, the leaf has not expired; returns the chain."""
    chain = certificates(chain_pem, "certificate chain")
    if not chain:
        raise IdentityError("certificate chain is empty", reason="empty_chain")
    check_key_matches(chain_pem, key_pem)
    leaf = chain[0]
    if leaf.not_after <= now:
        raise IdentityError(f"leaf certificate expired at {leaf.not_after.isoformat()}", reason="expired")
    return chain


def validate_material(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes, *, now: _dt.datetime) -> CertMaterial:
    """Check a cert/key/bundle triple; raise IdentityError with a closed reason if it must be refused."""
    chain = check_leaf_key(chain_pem, key_pem, now=now)
    roots = certificates(bundle_pem, "trust bundle")
    if not roots:
        raise IdentityError("trust bundle is empty", reason="empty_bundle")
    leaf = chain[0]
    return CertMaterial(chain_pem, key_pem, bundle_pem, _spiffe_id_of(leaf), leaf.not_after,
                        min(r.not_after for r in roots), leaf.fingerprint)


def _load_chain(ctx: ssl.SSLContext, material: CertMaterial) -> None:
    """`load_cert_chain` only reads files: chain+key in a 0600 temp file for the call."""
    with private_file(material.chain_pem.rstrip(b"\n") + b"\n" + material.key_pem) as path:
        ctx.load_cert_chain(path, password=NO_PASSWORD)


class _DirectSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` whose hot methods are the C methods themselves.

    uvloop's SSL transport binds `sslobj.read`, `.write` and `.pending` once per connection
    and calls them for every TLS record. On the stdlib class each is a Python-level wrapper
    that only forwards to `_ssl._SSLSocket`; binding the C methods as instance attributes
    removes three interpreter frames per record with identical semantics (same arguments,
    same return values, same exceptions). Installed via `SSLContext.sslobject_class`.
    """

    @classmethod
    def _create(cls, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None,
                session: Any = None, context: Any = None) -> ssl.SSLObject:
        if session is None and not server_side:
            slot = getattr(context, "secmesh_sessions", None)
            if slot is not None:
                session = slot.session     # resume the outbound listener's last session (see SessionSlot)
        self = super()._create(incoming, outgoing, server_side, server_hostname, session, context)
        raw = self._sslobj  # type: ignore[attr-defined]
        self.read = raw.read  # type: ignore[method-assign]
        self.write = raw.write  # type: ignore[method-assign]
        self.pending = raw.pending  # type: ignore[method-assign]
        return self


def _common(ctx: ssl.SSLContext, material: CertMaterial, min_version: str, ciphers_tls12: str) -> None:
    ctx.sslobject_class = _DirectSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if min_version == "1.2":
        ctx.set_ciphers(ciphers_tls12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_chain(ctx, material)
    ctx.load_verify_locations(cadata=material.bundle_pem.decode("ascii"))


def build_server_context(material: CertMaterial, *, min_version: str = "1.3",
                         ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20", tickets: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, material, min_version, ciphers_tls12)
    if tickets:
        # One ticket per full handshake, under keys that live and die with this context (so
        # with this certificate and trust bundle: see the module docstring).
        ctx.num_tickets = 1
    else:
        # No tickets: every connection is verified against the current bundle; it also saves a
        # ticket encryption per handshake.
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def build_client_context(material: CertMaterial, *, min_version: str = "1.3",
                         ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False   # SPIFFE: the server's identity is its URI SAN, checked after the handshake
    _common(ctx, material, min_version, ciphers_tls12)
    return ctx


class SessionSlot:
    """The last resumable TLS session of one outbound listener, for one certificate version.

    Clients in a pool connect to the same upstream; reusing the newest ticket for every new
    connection is what HAProxy and nginx (`proxy_ssl_session_reuse`) do. The slot is attached
    to that listener's own client context and dropped with it on rotation.
    """

    __slots__ = ("session", "waiting")

    def __init__(self) -> None:
        self.session: ssl.SSLSession | None = None
        self.waiting = False    # a capture is scheduled (the ticket arrives just after the handshake)

    def offer(self, sslobj: Any) -> bool:
        """Keep the connection's session if it carries a ticket; True when one was kept."""
        sess = sslobj.session if sslobj is not None else None
        if sess is not None and sess.has_ticket:
            self.session = sess
            return True
        return False


_NOT_AFTER: dict[str, float] = {}   # "notAfter" text → epoch seconds (strptime is slow; peers repeat)


def check_resumed_peer(peercert: dict[str, Any] | None, now: float) -> None:
    """A resumed session skips the certificate checks: refuse one whose peer cert has expired since."""
    text = (peercert or {}).get("notAfter")
    expires = _NOT_AFTER.get(text) if text else None
    if expires is None and text:
        expires = ssl.cert_time_to_seconds(text)
        if len(_NOT_AFTER) >= 4096:
            _NOT_AFTER.clear()
        _NOT_AFTER[text] = expires
    if expires is None or expires <= now:
        raise IdentityError("resumed TLS session: the peer certificate has expired", reason="cert_expired")


@dataclass(frozen=True)
class TlsState:
    material: CertMaterial
    server: ssl.SSLContext
    client: ssl.SSLContext
    version: int


class ContextHolder:
    """The newest TlsState behind one reference; `update` swaps it and notifies subscribers."""

    def __init__(self, *, min_version: str = "1.3", ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20",
                 session_resumption: bool = False) -> None:
        self._min_version = min_version
        self._ciphers = ciphers_tls12
        self.session_resumption = session_resumption
        self.state: TlsState | None = None
        self._subscribers: list[Callable[[TlsState], None]] = []
        self._clients: dict[str, tuple[int, ssl.SSLContext]] = {}

    def client_for(self, key: str) -> ssl.SSLContext:
        """The client context of one outbound listener (its own `SessionSlot`), rebuilt per cert version."""
        state = self.state
        assert state is not None, "no certificate held yet"
        if not self.session_resumption:
            return state.client
        hit = self._clients.get(key)
        if hit is not None and hit[0] == state.version:
            return hit[1]
        ctx = build_client_context(state.material, min_version=self._min_version, ciphers_tls12=self._ciphers)
        ctx.secmesh_sessions = SessionSlot()  # type: ignore[attr-defined]
        self._clients[key] = (state.version, ctx)
        return ctx

    def subscribe(self, fn: Callable[[TlsState], None]) -> None:
        self._subscribers.append(fn)

    def update(self, material: CertMaterial) -> TlsState:
        server = build_server_context(material, min_version=self._min_version, ciphers_tls12=self._ciphers,
                                      tickets=self.session_resumption)
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


_ID_CACHE: dict[str, SpiffeId] = {}   # URI SAN → parsed ID (SpiffeId is immutable)


def peer_spiffe_id(peercert: dict[str, Any] | None, trust_domain: TrustDomain | None) -> SpiffeId:
    """The verified peer's SPIFFE ID from its URI SAN (exactly one), in the expected trust domain."""
    if not peercert:
        raise IdentityError("peer presented no certificate", reason="no_peer_cert")
    uris = [v for (t, v) in peercert.get("subjectAltName", ()) if t == "URI"]
    if len(uris) != 1:
        raise IdentityError(f"peer certificate carries {len(uris)} URI SANs, need exactly one",
                            reason="bad_peer_id")
    sid = _ID_CACHE.get(uris[0])
    if sid is None:
        try:
            sid = SpiffeId.parse(uris[0])
        except InvalidSpiffeId as exc:
            raise IdentityError(f"peer URI SAN is not a SPIFFE ID: {exc}", reason="bad_peer_id") from None
        if len(_ID_CACHE) >= 4096:   # peers repeat; bound the cache anyway
            _ID_CACHE.clear()
        _ID_CACHE[uris[0]] = sid
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
