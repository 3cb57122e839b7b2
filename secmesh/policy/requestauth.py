"""RequestAuthentication: find the JWT in a request, verify it, and say what the request is.

Istio's semantics (request_authentication.proto and the behaviour of its Envoy config):
a request *without* a token passes with no request principal; a request with a token
that fails (unknown issuer, bad signature, expired, wrong audience, keys unavailable) is
rejected with 401 even if an AuthorizationPolicy would allow it. All RequestAuthentications
that select the workload are merged. Tokens are looked for in each rule's `fromHeaders`
/`fromParams`/`fromCookies`, or by default in `Authorization: Bearer …` then the
`access_token` query parameter.

This module is pure: time comes in as `now` (epoch seconds) and remote JWKS come from a
`JwksSource` (the sidecar fills a `JwksCache` asynchronously through a `JwksFetcher`;
nothing here does I/O). Tokens are never logged or put in messages: only iss/sub.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol
from urllib.parse import parse_qs

import jwt
from jwt import PyJWKSet

from secmesh.policy.attrs import DEFAULT_SPACE_DELIMITED
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, JwtRule, PolicySet, Workload, applies_to

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")
CLOCK_SKEW = 60.0  # Envoy jwt_authn default clock_skew_seconds


class JwksFetcher(Protocol):
    """Fetch a JWKS document (JSON text). Implementations do I/O; see `jwks_http.py`."""

    def fetch(self, uri: str, timeout: float) -> str: ...


class JwksSource(Protocol):
    def keys(self, uri: str) -> PyJWKSet | None: ...


class JwksCache:
    """Remote key sets by URI, with refresh and failure back-off decided from an injected `now`."""

    def __init__(self, refresh_interval: float = 20 * 60, retry_initial: float = 1.0, retry_max: float = 60.0) -> None:
        self.refresh_interval, self.retry_initial, self.retry_max = refresh_interval, retry_initial, retry_max
        self._keys: dict[str, PyJWKSet] = {}
        self._next: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    def keys(self, uri: str) -> PyJWKSet | None:
        return self._keys.get(uri)

    def due(self, uri: str, now: float) -> bool:
        return now >= self._next.get(uri, 0.0)

    def update(self, uri: str, text: str, now: float) -> None:
        """Store a fetched document; a bad document counts as a failure and keeps the old keys."""
        try:
            self._keys[uri] = PyJWKSet.from_json(text)
        except (jwt.PyJWKSetError, ValueError, TypeError):
            self.failed(uri, now)
            return
        self._backoff.pop(uri, None)
        self._next[uri] = now + self.refresh_interval

    def failed(self, uri: str, now: float) -> None:
        delay = min(self._backoff.get(uri, self.retry_initial / 2) * 2, self.retry_max)
        self._backoff[uri] = delay
        self._next[uri] = now + delay


@dataclass(frozen=True, slots=True)
class AuthResult:
    status: str                                 # "none" (no token) | "ok" | "invalid" (→ 401)
    claims: Mapping[str, Any] | None = None
    message: str = ""
    remove_headers: tuple[str, ...] = ()
    add_headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def principal(self) -> str | None:
        if not self.claims:
            return None
        iss, sub = self.claims.get("iss"), self.claims.get("sub")
        return f"{iss}/{sub}" if isinstance(iss, str) and isinstance(sub, str) else None


class _Provider:
    def __init__(self, rule: JwtRule) -> None:
        self.rule = rule
        self.inline = PyJWKSet.from_json(rule.jwks) if rule.jwks else None
        self.headers = [(h.name.lower(), h.prefix) for h in rule.from_headers]
        self.params = list(rule.from_params)
        if not rule.from_headers and not rule.from_params and not rule.from_cookies:
            self.headers, self.params = [("authorization", "Bearer ")], ["access_token"]

    def extract(self, headers: Mapping[str, str], query: Mapping[str, list[str]],
                cookies: Mapping[str, str]) -> list[tuple[str, str | None]]:
        """(token, header it came from or None for query/cookie) for every location of this rule."""
        found: list[tuple[str, str | None]] = []
        for name, prefix in self.headers:
            v = headers.get(name)
            if v is not None and v.startswith(prefix) and v[len(prefix):].strip():
                found.append((v[len(prefix):].strip(), name))
        for p in self.params:
            found.extend((t, None) for t in query.get(p, ()) if t)
        for c in self.rule.from_cookies:
            if cookies.get(c):
                found.append((cookies[c], None))
        return found


class RequestAuthenticator:
    """All jwtRules that apply to one workload, merged."""

    def __init__(self, policies: PolicySet, workload: Workload, root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> None:
        rules = [r for ra in policies.request_authentication if not ra.target_refs
                 and applies_to(ra.meta.namespace, ra.selector, workload, root_namespace) for r in ra.jwt_rules]
        self.providers = [_Provider(r) for r in rules]

    @property
    def remote_uris(self) -> list[str]:
        return sorted({p.rule.jwks_uri for p in self.providers if p.rule.jwks_uri and not p.inline})

    def authenticate(self, headers: Mapping[str, str], raw_query: str, now: float,
                     keys: JwksSource | None = None) -> AuthResult:
        """`headers` lower-cased; `raw_query` the part after `?`."""
        if not self.providers:
            return AuthResult("none")
        query = parse_qs(raw_query, keep_blank_values=False) if raw_query else {}
        cookies = _cookies(headers.get("cookie", ""))
        tokens: dict[str, list[tuple[_Provider, str | None]]] = {}
        for p in self.providers:
            for token, header in p.extract(headers, query, cookies):
                tokens.setdefault(token, []).append((p, header))
        if not tokens:
            return AuthResult("none")
        verified: list[tuple[dict[str, Any], _Provider, str | None]] = []
        for token, sources in tokens.items():
            claims, provider, header, error = self._verify(token, sources, now, keys)
            if error:
                return AuthResult("invalid", message=error)
            verified.append((claims, provider, header))  # type: ignore[arg-type]
        claims, provider, header = verified[0]
        remove = tuple(h for _, p, h in verified if h and not p.rule.forward_original_token)
        add: list[tuple[str, str]] = []
        if provider.rule.output_payload_to_header:
            payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
            add.append((provider.rule.output_payload_to_header, payload.decode()))
        for ch in provider.rule.output_claim_to_headers:
            v = claims.get(ch.claim)
            if isinstance(v, (str, int, float, bool)):
                add.append((ch.header, str(v).lower() if isinstance(v, bool) else str(v)))
        split = set(DEFAULT_SPACE_DELIMITED) | set(provider.rule.space_delimited_claims)
        shaped = {k: (v.split() if k in split and isinstance(v, str) else v) for k, v in claims.items()}
        return AuthResult("ok", shaped, "", remove, tuple(add))

    def _verify(self, token: str, sources: list[tuple[_Provider, str | None]], now: float,
                keys: JwksSource | None) -> tuple[dict[str, Any] | None, _Provider | None, str | None, str]:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None, None, None, "Jwt is not in the form of Header.Payload.Signature"
        iss = unverified.get("iss")
        matching = [(p, h) for p, h in sources if not p.rule.issuer or p.rule.issuer == iss]
        if not matching:
            return None, None, None, "Jwt issuer is not configured"
        last = "Jwks doesn't have key to match kid or alg from Jwt"
        for provider, where in matching:
            jwks = provider.inline or (keys.keys(provider.rule.jwks_uri) if keys and provider.rule.jwks_uri else None)
            if jwks is None:
                last = "Jwks remote fetch is failed"
                continue
            for key in _candidates(jwks, header):
                try:
                    claims = jwt.decode(token, key.key, algorithms=list(ALGORITHMS),
                                        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                                 "verify_aud": False, "verify_iss": False})
                except jwt.PyJWTError:
                    last = "Jwt verification fails"
                    continue
                problem = _check_claims(claims, provider.rule, now)
                if problem:
                    return None, None, None, problem
                return claims, provider, where, ""
        return None, None, None, last


def _candidates(jwks: PyJWKSet, header: Mapping[str, Any]) -> list[Any]:
    kid = header.get("kid")
    keys = [k for k in jwks.keys if kid is None or k.key_id in (kid, None)]
    return sorted(keys, key=lambda k: k.key_id != kid)


def _check_claims(claims: Mapping[str, Any], rule: JwtRule, now: float) -> str:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, (int, float)) and now > exp + CLOCK_SKEW:
        return "Jwt is expired"
    if isinstance(nbf, (int, float)) and now + CLOCK_SKEW < nbf:
        return "Jwt not yet valid"
    if rule.audiences:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(auds) & set(rule.audiences):
            return "Audiences in Jwt are not allowed"
    return ""


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            out[name] = value
    return out
