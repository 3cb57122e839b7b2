"""Kubernetes-style service-account JWTs → `WorkloadIdentity`.

The CA and the agent both turn a bearer token into a SPIFFE ID here, the way istiod's OIDC
authenticator does: signature against a JWKS, issuer, audience ∩ configured audiences,
`sub = system:serviceaccount:NS:SA` → `spiffe://TD/ns/NS/sa/SA`. Unlike that code path, `exp`
is required and checked. Time comes from an injected clock (pyjwt's own time checks are turned
off) so tests can move time by hand. Tokens are never logged: `token_summary` gives the
unverified `iss`/`sub`/`exp` a log line may carry.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import jwt
from jwt.exceptions import (DecodeError, InvalidAlgorithmError, InvalidKeyError, InvalidSignatureError,
                            PyJWKError, PyJWTError)

from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import IdentityError
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId, TrustDomain

ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
                                "PS256", "PS384", "PS512", "EdDSA"})
TOKEN_REASONS = ("missing", "malformed", "unknown_key", "bad_signature", "expired", "not_yet_valid",
                 "wrong_issuer", "wrong_audience", "bad_subject", "unsupported_algorithm")
_SIGNING_USES = (None, "sig", "jwt-svid")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_log = logging.getLogger(__name__)


class TokenError(IdentityError):
    """A token was refused; `reason` is one of `TOKEN_REASONS` (a closed set, used as a metric label)."""

    reason = "malformed"


@dataclass(frozen=True)
class WorkloadIdentity:
    spiffe_id: SpiffeId
    namespace: str
    service_account: str
    issuer: str
    subject: str
    expires_at: _dt.datetime


class KeySource(Protocol):
    def get_key(self, kid: str | None) -> jwt.PyJWK | None: ...


def _parse_jwks(doc: Any, *, what: str) -> dict[str | None, jwt.PyJWK]:
    """Signing keys of a JWKS by kid; entries that are not signing keys or cannot be read are skipped."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise IdentityError(f"{what} is not a JWKS (no `keys` list)", reason="bad_jwks")
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in doc["keys"]:
        if not isinstance(entry, Mapping) or entry.get("use") not in _SIGNING_USES:
            continue
        try:
            jwk = jwt.PyJWK.from_dict(dict(entry))
        except (PyJWKError, InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            _log.warning("skipping unreadable JWKS entry", extra={"fields": {"source": what, "error": str(exc)}})
            continue
        keys[entry.get("kid")] = jwk
    return keys


def _lookup(keys: Mapping[str | None, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    # a token without `kid` is only unambiguous when the set holds a single key
    return next(iter(keys.values())) if len(keys) == 1 else None


class StaticJwks:
    """A JWKS read once (from a file or a dict)."""

    remote = False

    def __init__(self, keys: Mapping[str | None, jwt.PyJWK]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, what: str = "JWKS") -> StaticJwks:
        return cls(_parse_jwks(doc, what=what))

    @classmethod
    def from_file(cls, path: str | Path) -> StaticJwks:
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise IdentityError(f"cannot read JWKS file {path}: {exc.strerror}", reason="bad_jwks") from None
        except ValueError as exc:
            raise IdentityError(f"JWKS file {path} is not JSON: {exc}", reason="bad_jwks") from None
        return cls.from_dict(doc, what=str(path))

    def get_key(self, kid: str | None) -> jwt.PyJWK | None:
        return _lookup(self._keys, kid)

    def __len__(self) -> int:
        return len(self._keys)


def _http_fetch(url: str, timeout: float, headers: Mapping[str, str] | None = None,
                context: ssl.SSLContext | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310 - http(s)
        return response.read(1 << 20)


def _read_token_file(path: Path) -> str:
    """The bearer token for the JWKS endpoint, read fresh on every fetch (kubelet rotates it in place)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise IdentityError(f"cannot read JWKS token file {path}: {exc.strerror}", reason="bad_jwks") from None
    if not token:
        raise IdentityError(f"JWKS token file {path} is empty", reason="bad_jwks")
    return token


class UrlJwks:
    """A JWKS fetched over HTTP(S), cached for `refresh_seconds`.

    An unknown kid triggers a refetch (a key rotation at the issuer), at most once per
    `min_refetch_seconds` so that tokens with made-up kids cannot turn the CA into a request
    amplifier. A failed refresh keeps the last good keys: an issuer outage must not log out
    every workload at once. Blocking: callers on an event loop run it in a thread (`remote`).
    """

    remote = True

    def __init__(self, url: str, refresh_seconds: float = 300, timeout: float = 5, *,
                 min_refetch_seconds: float = 10, fetch: Callable[[str, float], bytes] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, token_file: str | Path | None = None,
                 ca_file: str | Path | None = None) -> None:
        """`token_file`: sent as `Authorization: Bearer …` (https only, re-read per fetch), as the
        Kubernetes API server's `/openid/v1/jwks` wants; `ca_file`: the PEM bundle that verifies the
        https server instead of the system store (in-cluster: the service account's `ca.crt`)."""
        if (token_file or ca_file) and not url.startswith("https://"):
            raise IdentityError("a JWKS token file or CA bundle needs an https:// JWKS URL "
                                "(a bearer token is never sent in clear)", reason="bad_jwks")
        self.url = url
        self.refresh_seconds = refresh_seconds
        self.timeout = timeout
        self.min_refetch_seconds = min_refetch_seconds
        self.token_file = Path(token_file) if token_file else None
        self._context: ssl.SSLContext | None = None
        if ca_file:
            try:
                self._context = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise IdentityError(f"cannot load JWKS CA bundle {ca_file}: {exc}", reason="bad_jwks") from None
        self._fetch = fetch or self._fetch_http
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")

    def _fetch_http(self, url: str, timeout: float) -> bytes:
        headers = {"Authorization": f"Bearer {_read_token_file(self.token_file)}"} if self.token_file else None
        return _http_fetch(url, timeout, headers, self._context)

    def _refresh(self) -> None:
        self._attempted_at = self._monotonic()
        try:
            doc = json.loads(self._fetch(self.url, self.timeout))
            keys = _parse_jwks(doc, what=self.url)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good keys
            _log.warning("JWKS refresh failed; keeping the last good keys",
                         extra={"fields": {"url": self.url, "error": str(exc), "have_keys": self._keys is not None}})
            return
        self._keys = keys
        self._fetched_at = self._attempted_at

    def needs_fetch(self, kid: str | None) -> bool:
        """True when `get_key(kid)` may block on the network (stale cache or unknown kid)."""
        now = self._monotonic()
        if now - self._fetched_at >= self.refresh_seconds and now - self._attempted_at >= self.min_refetch_seconds:
            return True
        return (self._keys is None or _lookup(self._keys, kid) is None) and \
            now - self._attempted_at >= self.min_refetch_seconds

    def get_key(self, kid: str | None) -> jwt.PyJWK | None:
        with self._lock:
            now = self._monotonic()
            stale = now - self._fetched_at >= self.refresh_seconds
            may_retry = now - self._attempted_at >= self.min_refetch_seconds
            if (self._keys is None or stale) and may_retry:
                self._refresh()
            key = _lookup(self._keys or {}, kid)
            if key is None and kid is not None and self._monotonic() - self._attempted_at >= self.min_refetch_seconds:
                self._refresh()
                key = _lookup(self._keys or {}, kid)
            if key is None and self._keys is None:
                raise TokenError(f"JWKS {self.url} is unavailable", reason="unknown_key")
            return key


def jwks_source(spec: str, *, token_file: str | Path | None = None,
                ca_file: str | Path | None = None) -> StaticJwks | UrlJwks:
    """`https://…`/`http://…` → `UrlJwks`; anything else (or `file://…`) is a JWKS file.

    `token_file`/`ca_file` only make sense for an https URL (see `UrlJwks`); with a file they are refused.
    """
    if spec.startswith(("https://", "http://")):
        return UrlJwks(spec, token_file=token_file, ca_file=ca_file)
    if token_file or ca_file:
        raise IdentityError("a JWKS token file or CA bundle needs an https:// JWKS URL", reason="bad_jwks")
    return StaticJwks.from_file(spec.removeprefix("file://"))


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenError(f"`{name}` claim is not a number", reason="malformed")
    return float(value)


def parse_subject(subject: Any) -> tuple[str, str]:
    """`system:serviceaccount:NS:SA` → (NS, SA); exactly four parts, as istiod's kube authenticator wants."""
    if not isinstance(subject, str):
        raise TokenError("token has no `sub` claim", reason="bad_subject")
    parts = subject.split(":")
    if len(parts) != 4 or parts[0] != "system" or parts[1] != "serviceaccount" or not parts[2] or not parts[3]:
        raise TokenError("`sub` is not system:serviceaccount:<namespace>:<service-account>", reason="bad_subject")
    # each part becomes exactly one SPIFFE path segment: a '/' or a dot segment would forge another identity
    for part in parts[2:]:
        if not _NAME.fullmatch(part) or part in (".", ".."):
            raise TokenError("`sub` namespace or service account has characters a SPIFFE path segment cannot hold",
                             reason="bad_subject")
    return parts[2], parts[3]


class TokenValidator:
    """Validate service-account tokens against one key source for one trust domain."""

    def __init__(self, keys: KeySource, *, trust_domain: TrustDomain | str,
                 audiences: Sequence[str] = ("istio-ca",), issuers: Sequence[str] | None = None,
                 clock: Clock = SYSTEM_CLOCK, leeway_seconds: int = 30) -> None:
        self.keys = keys
        self.trust_domain = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
        self.audiences = frozenset(audiences)
        self.issuers = frozenset(issuers) if issuers else None
        self.clock = clock
        self.leeway = float(leeway_seconds)
        self._jws = jwt.PyJWT()

    def validate(self, token: str | None) -> WorkloadIdentity:
        if not token:
            raise TokenError("no bearer token", reason="missing")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as exc:
            raise TokenError(f"token is not a JWS: {exc}", reason="malformed") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not allowed", reason="unsupported_algorithm")
        kid = header.get("kid")
        jwk = self.keys.get_key(kid)
        if jwk is None:
            raise TokenError(f"no key with kid {kid!r} in the JWKS", reason="unknown_key")
        jwk_alg = getattr(jwk, "_jwk_data", {}).get("alg")
        if jwk_alg and jwk_alg != alg:
            raise TokenError(f"token alg {alg} does not match key alg {jwk_alg}", reason="bad_signature")
        claims = self._verified_claims(token, jwk, alg)
        return self._check_claims(claims)

    def _verified_claims(self, token: str, jwk: jwt.PyJWK, alg: str) -> dict[str, Any]:
        options = {"verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                   "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False}
        try:
            return self._jws.decode(token, jwk.key, algorithms=[alg], options=options)  # type: ignore[arg-type]
        except InvalidSignatureError:
            raise TokenError("token signature does not verify", reason="bad_signature") from None
        except InvalidAlgorithmError as exc:
            raise TokenError(f"token algorithm refused: {exc}", reason="unsupported_algorithm") from None
        except (InvalidKeyError, TypeError, ValueError) as exc:
            raise TokenError(f"token key does not fit its algorithm: {exc}", reason="bad_signature") from None
        except DecodeError as exc:
            raise TokenError(f"token cannot be decoded: {exc}", reason="malformed") from None
        except PyJWTError as exc:
            raise TokenError(f"token refused: {exc}", reason="malformed") from None

    def _check_claims(self, claims: Mapping[str, Any]) -> WorkloadIdentity:
        now = self.clock.now().timestamp()
        exp = _numeric(claims, "exp")
        if exp is None:
            raise TokenError("token has no `exp` claim", reason="malformed")
        if exp <= now - self.leeway:
            raise TokenError("token has expired", reason="expired")
        for name in ("nbf", "iat"):
            value = _numeric(claims, name)
            if value is not None and value > now + self.leeway:
                raise TokenError(f"token is not valid yet (`{name}` in the future)", reason="not_yet_valid")
        issuer = claims.get("iss")
        if self.issuers is not None and issuer not in self.issuers:
            raise TokenError(f"token issuer {issuer!r} is not trusted", reason="wrong_issuer")
        aud = claims.get("aud")
        token_auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not token_auds & self.audiences:
            raise TokenError("token audience does not include " + ", ".join(sorted(self.audiences)),
                             reason="wrong_audience")
        subject = claims.get("sub")
        namespace, service_account = parse_subject(subject)
        try:
            spiffe_id = SpiffeId.for_service_account(self.trust_domain, namespace, service_account)
        except InvalidSpiffeId as exc:
            raise TokenError(f"`sub` does not map to a SPIFFE ID: {exc}", reason="bad_subject") from None
        return WorkloadIdentity(spiffe_id=spiffe_id, namespace=namespace, service_account=service_account,
                                issuer=str(issuer) if issuer is not None else "", subject=str(subject),
                                expires_at=_dt.datetime.fromtimestamp(exp, _dt.timezone.utc))


def token_summary(token: str | None) -> dict[str, Any]:
    """Unverified `iss`, `sub`, `exp` of a token for log lines; never the token itself."""
    if not token:
        return {}
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except PyJWTError:
        return {"token": "malformed"}
    return {k: claims.get(k) for k in ("iss", "sub", "exp") if isinstance(claims.get(k), (str, int, float))}
