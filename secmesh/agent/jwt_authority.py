"""JWT-SVIDs: mint (ES256) and validate, plus the SPIFFE JWT bundle that publishes the signing key.

The CA does not (yet) publish a JWT signing key, so the agent holds its own ES256 key, created
at start-up and kept in memory only, and publishes it through `FetchJWTBundles` (a SPIFFE
bundle: JWKS entries with `use: jwt-svid` and a `kid`). Consequence: a JWT-SVID minted by one
agent validates with that agent's bundle; validators on other nodes need that node's bundle.

Validation follows the JWT-SVID spec (reference §3.3): only `alg`/`kid`/`typ` headers, `alg`
from the spec's list (no `none`, no HS*), `typ` JWT or JOSE if present, `kid` known, `aud`
present and containing the validator's audience, `exp` present and in the future, `sub` a
SPIFFE ID of our trust domain. Pure: `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from secmesh.errors import IdentityError
from secmesh.identity.bundle import TrustBundle
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId, TrustDomain

JWT_SVID_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
ALLOWED_HEADERS = frozenset({"alg", "kid", "typ"})


class JwtSvidError(IdentityError):
    reason = "invalid_jwt_svid"


class JwtAuthority:
    def __init__(self, trust_domain: TrustDomain | str, key: ec.EllipticCurvePrivateKey | None = None,
                 kid: str | None = None) -> None:
        self.trust_domain = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
        self.key = key or generate_p256()
        self.kid = kid or uuid.uuid4().hex
        self._public = {self.kid: self.key.public_key()}
        self._jws = jwt.PyJWT()

    def mint(self, spiffe_id: SpiffeId, audiences: Sequence[str], *, now: dt.datetime, ttl_seconds: float) -> str:
        if not audiences:
            raise JwtSvidError("a JWT-SVID needs at least one audience", reason="missing_audience")
        issued = int(now.timestamp())
        claims: dict[str, Any] = {
            "sub": str(spiffe_id),
            "aud": audiences[0] if len(audiences) == 1 else list(audiences),
            "iat": issued,
            "exp": issued + int(ttl_seconds),
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})

    def bundle(self) -> TrustBundle:
        return TrustBundle(self.trust_domain, (), dict(self._public))

    def bundle_json(self) -> bytes:
        return json.dumps(self.bundle().to_spiffe_jwks(), separators=(",", ":")).encode()

    def validate(self, token: str, audience: str, *, now: dt.datetime) -> tuple[SpiffeId, dict[str, Any]]:
        if not token:
            raise JwtSvidError("svid is required", reason="missing")
        if not audience:
            raise JwtSvidError("audience is required", reason="missing_audience")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise JwtSvidError(f"not a JWS compact token: {exc}", reason="malformed") from None
        extra = set(header) - ALLOWED_HEADERS
        if extra:
            raise JwtSvidError(f"header parameters not allowed in a JWT-SVID: {sorted(extra)}", reason="malformed")
        alg = header.get("alg")
        if alg not in JWT_SVID_ALGORITHMS:
            raise JwtSvidError(f"algorithm {alg!r} is not allowed for JWT-SVIDs", reason="unsupported_algorithm")
        if header.get("typ") not in (None, "JWT", "JOSE"):
            raise JwtSvidError(f"typ {header.get('typ')!r} must be JWT or JOSE", reason="malformed")
        key = self._public.get(header.get("kid"))
        if key is None:
            raise JwtSvidError(f"no JWT authority with kid {header.get('kid')!r}", reason="unknown_key")
        try:
            claims = self._jws.decode(token, key, algorithms=[alg],
                                      options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                                               "verify_nbf": False})
        except jwt.InvalidSignatureError:
            raise JwtSvidError("signature does not verify", reason="bad_signature") from None
        except jwt.PyJWTError as exc:
            raise JwtSvidError(f"token refused: {exc}", reason="malformed") from None
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not auds:
            raise JwtSvidError("token has no audience", reason="wrong_audience")
        if audience not in auds:
            raise JwtSvidError(f"audience {audience!r} not in token audiences", reason="wrong_audience")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise JwtSvidError("token has no numeric exp", reason="malformed")
        if exp <= now.timestamp():
            raise JwtSvidError("token has expired", reason="expired")
        try:
            sid = SpiffeId.parse(claims.get("sub"))  # type: ignore[arg-type]
        except InvalidSpiffeId as exc:
            raise JwtSvidError(f"sub is not a SPIFFE ID: {exc.message}", reason="bad_subject") from None
        if sid.trust_domain != self.trust_domain:
            raise JwtSvidError(f"sub {sid} is not in trust domain {self.trust_domain}", reason="bad_subject")
        return sid, claims
