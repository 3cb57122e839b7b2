"""Trust bundles: the X.509 (and JWT) authorities of one trust domain.

Bundles of different trust domains are never merged (SPIFFE Trust Domain and Bundle spec): a
chain is verified only against the bundle of its leaf's trust domain, so a `BundleSet` is a map
keyed by trust domain, not a flat list of roots.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secmesh.errors import IdentityError
from secmesh.identity.spiffe import TrustDomain

X509_USE = "x509-svid"
JWT_USE = "jwt-svid"


def load_pem_certificates(data: bytes, *, what: str = "PEM") -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"cannot read certificates from {what}: {exc}", reason="bad_pem") from None
    return certs


def certificates_pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _jwk_of_public_key(key: Any) -> dict[str, Any]:
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm   # JWKS form only: keep it off the data path

    for algorithm in (ECAlgorithm, RSAAlgorithm, OKPAlgorithm):
        try:
            return algorithm.to_jwk(key, as_dict=True)
        except Exception:  # noqa: BLE001 - try the next key family
            continue
    raise IdentityError(f"unsupported public key type {type(key).__name__}", reason="bad_key")


@dataclass(frozen=True)
class TrustBundle:
    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...]
    jwt_authorities: Mapping[str, Any] = field(default_factory=dict)  # kid -> public key
    refresh_hint: int | None = None
    sequence: int | None = None

    @classmethod
    def from_pem(cls, trust_domain: TrustDomain | str, data: bytes, *, what: str = "bundle") -> TrustBundle:
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
        certs = load_pem_certificates(data, what=what)
        if not certs:
            raise IdentityError(f"{what} holds no certificate", reason="empty_bundle")
        return cls(td, tuple(certs))

    def to_pem(self) -> bytes:
        return certificates_pem(self.x509_authorities)

    def to_spiffe_jwks(self) -> dict[str, Any]:
        """The SPIFFE bundle format: a JWKS whose X.509 entries have `use: x509-svid` and one `x5c`, no `kid`."""
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            jwk = _jwk_of_public_key(cert.public_key())
            jwk["use"] = X509_USE
            jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
            keys.append(jwk)
        for kid, public_key in self.jwt_authorities.items():
            jwk = _jwk_of_public_key(public_key)
            jwk["use"] = JWT_USE
            jwk["kid"] = kid
            keys.append(jwk)
        out: dict[str, Any] = {"keys": keys}
        if self.refresh_hint is not None:
            out["spiffe_refresh_hint"] = self.refresh_hint
        if self.sequence is not None:
            out["spiffe_sequence"] = self.sequence
        return out

    @classmethod
    def from_spiffe_jwks(cls, trust_domain: TrustDomain | str, doc: Mapping[str, Any]) -> TrustBundle:
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
        x509s: list[x509.Certificate] = []
        jwts: dict[str, Any] = {}
        for entry in doc.get("keys", []):
            use = entry.get("use")
            if use == X509_USE:
                x5c = entry.get("x5c") or []
                if len(x5c) != 1:
                    raise IdentityError("x509-svid bundle entry must carry exactly one x5c certificate",
                                        reason="bad_bundle")
                x509s.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0])))
            elif use == JWT_USE:
                kid = entry.get("kid")
                if not kid:
                    raise IdentityError("jwt-svid bundle entry must set kid", reason="bad_bundle")
                from jwt import PyJWK

                jwts[kid] = PyJWK.from_dict(dict(entry)).key
        return cls(td, tuple(x509s), jwts, doc.get("spiffe_refresh_hint"), doc.get("spiffe_sequence"))


class BundleSet:
    """Bundles keyed by trust domain; `get` never falls back to another domain's roots."""

    def __init__(self, bundles: list[TrustBundle] | tuple[TrustBundle, ...] = ()) -> None:
        self._by_td: dict[TrustDomain, TrustBundle] = {}
        for bundle in bundles:
            self.add(bundle)

    def add(self, bundle: TrustBundle) -> None:
        existing = self._by_td.get(bundle.trust_domain)
        if existing is not None:
            bundle = TrustBundle(bundle.trust_domain, existing.x509_authorities + bundle.x509_authorities,
                                 {**existing.jwt_authorities, **bundle.jwt_authorities})
        self._by_td[bundle.trust_domain] = bundle

    def get(self, trust_domain: TrustDomain) -> TrustBundle | None:
        return self._by_td.get(trust_domain)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_td.values())

    def __len__(self) -> int:
        return len(self._by_td)
