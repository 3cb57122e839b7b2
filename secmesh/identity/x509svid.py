"""X.509-SVID rules and chain verification against per-trust-domain bundles.

`cryptography.x509.verification` does RFC 5280 path building, signatures and validity; this
module adds what the X509-SVID standard requires on top and says *which* rule failed, so a
refused peer is logged and counted by a stable `reason` instead of a generic "bad certificate":

- the leaf carries exactly one URI SAN, a SPIFFE ID with a non-root path;
- the leaf is not a CA; key usage is present and critical, with digitalSignature and without
  keyCertSign/cRLSign; an EKU, if present, holds both serverAuth and clientAuth;
- signing certificates are CAs with keyCertSign, and their SPIFFE ID (if any) has no path;
- the chain is verified against the bundle of the leaf's own trust domain only (bundles are
  never merged), at an injected `now`.

The webpki end-entity policy would refuse a serverAuth-only EKU for a client and any SPIFFE
server certificate (no DNS name), so the client verifier is used for both directions with the
EKU check relaxed there and done here instead (pitfall P9). Its CA/B Forum rule "SAN MUST NOT be
critical when the subject is non-empty" is relaxed too: RFC 5280 only says SHOULD, SPIFFE says
nothing, Go and Envoy accept such SVIDs (openssl-made ones often look like that); the rule that
matters, "empty subject ⇒ SAN critical", is checked here.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from secmesh.errors import IdentityError
from secmesh.identity.bundle import BundleSet, TrustBundle
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId

# The closed set of reasons an SVID is refused (metric label values).
REASONS = (
    "empty_chain", "malformed", "no_uri_san", "multiple_uri_sans", "invalid_spiffe_id", "leaf_is_ca",
    "bad_key_usage", "bad_eku", "bad_san", "bad_signing_cert", "no_bundle_for_trust_domain", "expired",
    "not_yet_valid", "untrusted",
)


class SvidError(IdentityError):
    """An X.509-SVID or its chain broke a rule; `reason` is one of `REASONS`."""

    reason = "untrusted"


@dataclass(frozen=True, slots=True)
class VerifiedSvid:
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]  # leaf first, up to and including the bundle's root


def load_certificate(data: x509.Certificate | bytes) -> x509.Certificate:
    """Accept a parsed certificate or DER bytes (what `ssl` hands back for a peer)."""
    if isinstance(data, x509.Certificate):
        return data
    try:
        return x509.load_der_x509_certificate(bytes(data))
    except (ValueError, TypeError) as exc:
        raise SvidError(f"certificate is not valid DER: {exc}", reason="malformed") from None


def _extension(cert: x509.Certificate, oid_type: type[x509.ExtensionType]) -> x509.Extension | None:
    try:
        return cert.extensions.get_extension_for_class(oid_type)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or undecodable extension
        raise SvidError(f"certificate extensions cannot be parsed: {exc}", reason="malformed") from None


def _uri_sans(cert: x509.Certificate) -> list[str]:
    ext = _extension(cert, x509.SubjectAlternativeName)
    if ext is None:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(cert: x509.Certificate | bytes) -> SpiffeId:
    """The SPIFFE ID of an X.509-SVID: its one URI SAN (no other leaf rule is checked here)."""
    cert = load_certificate(cert)
    uris = _uri_sans(cert)
    if not uris:
        raise SvidError("certificate has no URI SAN", reason="no_uri_san")
    if len(uris) > 1:
        raise SvidError(f"certificate has {len(uris)} URI SANs, an X.509-SVID must have exactly one",
                        reason="multiple_uri_sans")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise SvidError(f"URI SAN {uris[0]!r} is not a valid SPIFFE ID: {exc.message}",
                        reason="invalid_spiffe_id") from None


def _is_ca(cert: x509.Certificate) -> bool:
    ext = _extension(cert, x509.BasicConstraints)
    return ext is not None and ext.value.ca


def check_leaf(cert: x509.Certificate | bytes) -> SpiffeId:
    """Apply the X509-SVID leaf rules (not the chain, not time) and return the leaf's SPIFFE ID."""
    cert = load_certificate(cert)
    spiffe_id = spiffe_id_of(cert)
    if spiffe_id.is_member_only:
        raise SvidError(f"leaf SPIFFE ID {spiffe_id} has no path; a leaf X.509-SVID needs a non-root path",
                        reason="invalid_spiffe_id")
    if _is_ca(cert):
        raise SvidError("leaf certificate has basicConstraints cA=true", reason="leaf_is_ca")
    ku = _extension(cert, x509.KeyUsage)
    if ku is None:
        raise SvidError("leaf certificate has no key usage extension", reason="bad_key_usage")
    if not ku.critical:
        raise SvidError("leaf key usage extension must be critical", reason="bad_key_usage")
    if not ku.value.digital_signature:
        raise SvidError("leaf key usage lacks digitalSignature", reason="bad_key_usage")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        raise SvidError("leaf key usage must not assert keyCertSign or cRLSign", reason="bad_key_usage")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        usages = set(eku.value)
        missing = [name for oid, name in ((ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                                          (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth")) if oid not in usages]
        if missing:
            raise SvidError(f"leaf extended key usage lacks {' and '.join(missing)}", reason="bad_eku")
    if len(cert.subject) == 0:
        san = _extension(cert, x509.SubjectAlternativeName)
        if san is not None and not san.critical:
            raise SvidError("leaf has an empty subject, so its subjectAltName must be critical", reason="bad_san")
    return spiffe_id


def check_signing_cert(cert: x509.Certificate) -> None:
    """Apply the X509-SVID signing-certificate rules: cA=true, keyCertSign, SPIFFE ID without a path."""
    label = cert.subject.rfc4514_string() or "<empty subject>"
    if not _is_ca(cert):
        raise SvidError(f"signing certificate {label} is not a CA (basicConstraints cA=false or absent)",
                        reason="bad_signing_cert")
    ku = _extension(cert, x509.KeyUsage)
    if ku is None or not ku.value.key_cert_sign:
        raise SvidError(f"signing certificate {label} lacks keyCertSign", reason="bad_signing_cert")
    for uri in _uri_sans(cert):
        if not uri.startswith("spiffe://"):
            continue
        try:
            sid = SpiffeId.parse(uri)
        except InvalidSpiffeId as exc:
            raise SvidError(f"signing certificate {label} has an invalid SPIFFE ID {uri!r}: {exc.message}",
                            reason="bad_signing_cert") from None
        if not sid.is_member_only:
            raise SvidError(f"signing certificate {label} has SPIFFE ID {sid} with a path; "
                            "a signing certificate's SPIFFE ID must have none", reason="bad_signing_cert")


def _check_time(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise SvidError(f"{what} is not valid before {_iso(cert.not_valid_before_utc)} (now {_iso(now)})",
                        reason="not_yet_valid")
    if now > cert.not_valid_after_utc:
        raise SvidError(f"{what} expired at {_iso(cert.not_valid_after_utc)} (now {_iso(now)})", reason="expired")


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the cryptography verifier, one store per bundle -------------------------------------------

_EE_POLICY = (ExtensionPolicy.webpki_defaults_ee()
              .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
              .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None))
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()
_STORE_CACHE_SIZE = 64


class _StoreCache:
    """Stores keyed by bundle identity; the entry keeps its bundle alive so an id() is never reused."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, tuple[TrustBundle, Store]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, bundle: TrustBundle) -> Store:
        key = id(bundle)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is bundle:
                self._entries.move_to_end(key)
                return entry[1]
        store = Store(list(bundle.x509_authorities))
        with self._lock:
            self._entries[key] = (bundle, store)
            self._entries.move_to_end(key)
            while len(self._entries) > _STORE_CACHE_SIZE:
                self._entries.popitem(last=False)
        return store


_STORES = _StoreCache()


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.timezone.utc)


def verify_chain(chain: Sequence[x509.Certificate | bytes], bundles: BundleSet, now: dt.datetime) -> VerifiedSvid:
    """Verify an X.509-SVID chain (leaf first, then intermediates) at `now`.

    Returns the leaf's SPIFFE ID and the verified path; raises `SvidError` naming the broken rule.
    """
    if not chain:
        raise SvidError("no certificate presented", reason="empty_chain")
    now = _utc(now)
    certs = [load_certificate(c) for c in chain]
    leaf, intermediates = certs[0], certs[1:]
    spiffe_id = check_leaf(leaf)
    for cert in intermediates:
        check_signing_cert(cert)
    _check_time(leaf, now, "leaf certificate")
    for cert in intermediates:
        _check_time(cert, now, f"intermediate {cert.subject.rfc4514_string() or '<empty subject>'}")
    bundle = bundles.get(spiffe_id.trust_domain)
    if bundle is None or not bundle.x509_authorities:
        raise SvidError(f"no trust bundle for trust domain {spiffe_id.trust_domain} (peer {spiffe_id})",
                        reason="no_bundle_for_trust_domain")
    verifier = (PolicyBuilder().store(_STORES.get(bundle)).time(now)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY).build_client_verifier())
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise _untrusted(exc, spiffe_id, bundle, now) from None
    for cert in verified.chain[1:]:
        check_signing_cert(cert)
    return VerifiedSvid(spiffe_id, tuple(verified.chain))


def _untrusted(exc: VerificationError, spiffe_id: SpiffeId, bundle: TrustBundle, now: dt.datetime) -> SvidError:
    detail = str(exc).split(" (encountered processing", 1)[0].removeprefix("validation failed: ")
    if "not valid at validation time" in detail:
        for root in bundle.x509_authorities:
            if now < root.not_valid_before_utc or now > root.not_valid_after_utc:
                try:
                    _check_time(root, now, f"trust bundle root {root.subject.rfc4514_string()}")
                except SvidError as err:
                    return err
    return SvidError(f"chain of {spiffe_id} does not verify against the bundle of trust domain "
                     f"{spiffe_id.trust_domain}: {detail}", reason="untrusted")


def verify_leaf_der(der: bytes, bundles: BundleSet, now: dt.datetime,
                    intermediates: Sequence[bytes] = ()) -> VerifiedSvid:
    """Convenience for TLS shells: verify a peer's DER leaf (plus any DER intermediates)."""
    return verify_chain([der, *intermediates], bundles, now)
