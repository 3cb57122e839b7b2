"""RequestAuthentication: find the JWTs in a request, verify them, and say what the request is.

Istio's semantics, as its builder (`convertToEnvoyJwtConfig`) configures Envoy's jwt_authn:
all RequestAuthentications selecting the workload are merged, their rules sorted by issuer,
and one provider per rule is required as `P1 OR P2 … OR AND(P1 or missing, P2 or missing …)`.
So, per request:

- a request with no token at any rule's location passes with no request principal;
- a provider *succeeds* when it found a token at one of its own locations and every such
  token verifies (issuer, time with 60 s skew, audiences, then signature — Envoy's order);
  the request passes as soon as one provider succeeds (the first in issuer order gives the
  principal: Istio calls requests with tokens at several locations "not supported, the
  output principal … is undefined");
- otherwise it is rejected (401) with Envoy's message, preferring a real failure ("Jwt is
  expired") over "Jwt issuer is not configured" — a token whose issuer no rule names is
  rejected, not ignored (istio/istio#24371). Keys not fetched yet fail the token with
  "Jwks remote fetch is failed"; nothing waits for them.

Outputs are pure data for the proxy to apply (remove, then add): headers named by any rule's
`outputPayloadToHeader` / `outputClaimToHeaders` are always removed from the incoming
request (a client must not forge them); on success the verified token's header is removed
unless `forwardOriginalToken`, the payload goes to `outputPayloadToHeader` as the token's
own base64url segment, and claims (nested with `.`) to their headers as Envoy renders them.
Claims named in `spaceDelimitedClaims`, plus `scope` and `permission`, are split on spaces
for authorization. Time comes in as `now`, keys from a `JwksSource`; tokens are never
logged or put in messages.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol
from urllib.parse import parse_qsl

import jwt
from jwt import PyJWKSet

from secmesh.policy.attrs import DEFAULT_SPACE_DELIMITED, split_space_delimited
from secmesh.policy.jwks import JwksCache, JwksState, discovery_uri
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, JwtRule, PolicySet, Workload, applies_to

__all__ = ["AuthResult", "JwksCache", "JwksFetcher", "JwksSource", "JwksState", "RequestAuthenticator"]

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")
CLOCK_SKEW = 60.0  # Envoy jwt_authn default clock_skew_seconds
_B64URL_DOT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")

# Envoy (jwt_verify_lib) status strings
MISSING = "Jwt is missing"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
EXPIRED = "Jwt is expired"
NOT_YET_VALID = "Jwt not yet valid"
BAD_AUDIENCE = "Audiences in Jwt are not allowed"
FETCH_FAILED = "Jwks remote fetch is failed"
NO_KEY = "Jwks doesn't have key to match kid or alg from Jwt"
BAD_SIGNATURE = "Jwt verification fails"
_SOFT = (MISSING, UNKNOWN_ISSUER)   # statuses Envoy's OR ranks below real failures


class JwksFetcher(Protocol):
    """Fetch a JWKS document (JSON text). Implementations do I/O; see `jwks_http.py`."""

    def fetch(self, uri: str, timeout: float) -> str: ...


class JwksSource(Protocol):
    def keys(self, uri: str) -> PyJWKSet | None: ...


@dataclass(frozen=True, slots=True)
class AuthResult:
    status: str                                 # "none" (no token) | "ok" | "invalid" (→ 401)
    claims: Mapping[str, Any] | None = None     # shaped for authorization (space-delimited claims split)
    message: str = ""
    remove_headers: tuple[str, ...] = ()        # lower-case names; apply before add_headers
    add_headers: tuple[tuple[str, str], ...] = ()
    raw_claims: Mapping[str, Any] | None = None  # the payload as signed

    @property
    def principal(self) -> str | None:
        if not self.claims:
            return None
        iss, sub = self.claims.get("iss"), self.claims.get("sub")
        return f"{iss}/{sub}" if isinstance(iss, str) and isinstance(sub, str) else None


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    header: str | None          # the header it came from (None: query parameter or cookie)


class _Provider:
    """One jwtRule: where its tokens are, which keys verify them, what it outputs."""

    def __init__(self, rule: JwtRule) -> None:
        self.rule = rule
        self.inline = PyJWKSet.from_json(rule.jwks) if rule.jwks else None
        self.key_uri = None if self.inline else (rule.jwks_uri or discovery_uri(rule.issuer))
        headers = [(h.name.lower(), h.prefix) for h in rule.from_headers]
        params, cookies = list(rule.from_params), list(rule.from_cookies)
        if not headers and not params and not cookies:
            headers, params = [("authorization", "Bearer ")], ["access_token"]
        # Envoy's extractor order: headers by name+prefix, then params, then cookies, each sorted
        self.headers = sorted(set(headers), key=lambda hp: hp[0] + hp[1])
        self.params, self.cookies = sorted(set(params)), sorted(set(cookies))
        self.outputs = tuple(h.lower() for h in ([rule.output_payload_to_header] if rule.output_payload_to_header
                                                 else []) + [c.header for c in rule.output_claim_to_headers])
        self.split = frozenset(DEFAULT_SPACE_DELIMITED) | frozenset(rule.space_delimited_claims)
        self.audiences = frozenset(_sanitize_audience(a) for a in rule.audiences)

    def extract(self, headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str]) -> list[_Token]:
        found = []
        for name, prefix in self.headers:
            v = headers.get(name)
            if v is None:
                continue
            if prefix:
                at = v.find(prefix)
                if at < 0:
                    continue  # e.g. `Authorization: Basic …` is not a bearer token
                v = _jwt_run(v, at + len(prefix))
            found.append(_Token(v, name))
        found.extend(_Token(query[p], None) for p in self.params if p in query)
        found.extend(_Token(cookies[c], None) for c in self.cookies if c in cookies)
        return found

    def verify(self, token: str, now: float, keys: JwksSource | None) -> tuple[dict[str, Any] | None, str]:
        """(claims, "") or (None, Envoy's failure message)."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            return None, BAD_FORMAT
        if not isinstance(claims, dict):
            return None, BAD_FORMAT
        if self.rule.issuer and claims.get("iss") != self.rule.issuer:
            return None, UNKNOWN_ISSUER
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if _number(nbf) and now + CLOCK_SKEW < nbf:
            return None, NOT_YET_VALID
        if _number(exp) and now > exp + CLOCK_SKEW:
            return None, EXPIRED
        if self.audiences:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and _sanitize_audience(a) in self.audiences for a in auds):
                return None, BAD_AUDIENCE
        jwks = self.inline or (keys.keys(self.key_uri) if keys is not None and self.key_uri else None)
        if jwks is None:
            return None, FETCH_FAILED
        alg = header.get("alg")
        candidates = _candidates(jwks, header)
        if alg not in ALGORITHMS or not candidates:
            return None, NO_KEY
        for key in candidates:
            try:
                jwt.decode(token, key.key, algorithms=[alg],
                           options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                    "verify_aud": False, "verify_iss": False})
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            return claims, ""
        return None, BAD_SIGNATURE


class RequestAuthenticator:
    """All jwtRules that apply to one workload, merged (Istio: sorted by issuer)."""

    def __init__(self, policies: PolicySet, workload: Workload, root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> None:
        rules = [r for ra in policies.request_authentication if not ra.target_refs
                 and applies_to(ra.meta.namespace, ra.selector, workload, root_namespace) for r in ra.jwt_rules]
        rules.sort(key=lambda r: r.issuer)   # stable: same-issuer rules keep their order
        self.providers = [_Provider(r) for r in rules]
        self._sanitize = tuple(sorted({h for p in self.providers for h in p.outputs}))

    @property
    def remote_uris(self) -> list[str]:
        """What the refresher must keep fetched: `jwksUri`s, and discovery URLs for issuer-only rules."""
        return sorted({p.key_uri for p in self.providers if p.key_uri})

    @property
    def remote_sources(self) -> list[tuple[str, float]]:
        """(uri, fetch timeout) pairs: each rule's `timeout`, Istio's 5 s by default (the largest wins)."""
        out: dict[str, float] = {}
        for p in self.providers:
            if p.key_uri:
                t = p.rule.timeout_seconds if p.rule.timeout_seconds is not None else 5.0
                out[p.key_uri] = max(out.get(p.key_uri, 0.0), t)
        return sorted(out.items())

    def authenticate(self, headers: Mapping[str, str], raw_query: str, now: float,
                     keys: JwksSource | None = None) -> AuthResult:
        """`headers` lower-cased (repeated ones comma-joined); `raw_query` the part after `?`."""
        if not self.providers:
            return AuthResult("none")
        query: dict[str, str] = {}
        if raw_query:
            for k, v in parse_qsl(raw_query.partition("#")[0], keep_blank_values=True):
                query.setdefault(k, v)   # Envoy keeps the first occurrence
        cookies = _cookies(headers.get("cookie", ""))
        failures: list[str] = []
        anything = False
        for p in self.providers:
            tokens = p.extract(headers, query, cookies)
            if not tokens:
                failures.append(MISSING)
                continue
            anything = True
            verified = []
            # Envoy verifies the last-extracted token first and stops at the first failure;
            # every token at this provider's locations must verify
            for t in reversed(tokens):
                claims, error = p.verify(t.value, now, keys)
                if claims is None:
                    failures.append(error)
                    break
                verified.append((t, claims))
            else:
                return self._success(p, verified)
        if not anything:
            return AuthResult("none", remove_headers=self._sanitize)
        return AuthResult("invalid", message=_preferred(failures))

    def _success(self, p: _Provider, verified: list[tuple[_Token, dict[str, Any]]]) -> AuthResult:
        remove = list(self._sanitize)
        add: list[tuple[str, str]] = []
        rule = p.rule
        for token, claims in verified:
            if rule.output_payload_to_header:
                add.append((rule.output_payload_to_header.lower(), token.value.split(".")[1]))
            for ch in rule.output_claim_to_headers:
                value = claim_header_value(claims, ch.claim)
                if value:
                    add.append((ch.header.lower(), value))
            if token.header and not rule.forward_original_token and token.header not in remove:
                remove.append(token.header)
        claims = verified[-1][1]   # the last one verified (the first extracted) leaves its payload
        return AuthResult("ok", split_space_delimited(claims, p.split), "", tuple(remove), tuple(add), claims)


_UNSAFE_IN_VALUE = re.compile("[\r\n\x00]")


def claim_header_value(claims: Mapping[str, Any], name: str) -> str:
    """`outputClaimToHeaders`: Envoy's rendering of a (possibly `a.b` nested) claim; "" = no header."""
    cur: Any = claims
    for part in name.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, str):
        # A signed claim is still the token issuer's data, not ours: a CR, LF or NUL in it would
        # split the header it is copied into (request smuggling on an HTTP/1.1 upstream), and
        # HTTP/2 forbids them. Such a claim is not copied, as an absent one.
        return "" if _UNSAFE_IN_VALUE.search(cur) else cur
    if isinstance(cur, (int, float)):
        d = float(cur)
        if d < 0 or d >= 2.0 ** 64 or not d.is_integer():
            return f"{d:f}"        # C++ std::to_string(double)
        return str(int(d))
    if isinstance(cur, (dict, list)):
        text = json.dumps(cur, separators=(",", ":"), sort_keys=True)
        return base64.b64encode(text.encode()).decode()
    return ""


def _preferred(failures: list[str]) -> str:
    """Envoy's RequiresAny: a real failure over "issuer not configured" over "missing" (last real one wins)."""
    final = MISSING
    for f in failures:
        if f not in _SOFT or final == MISSING:
            final = f
    return final


def _jwt_run(value: str, after: int) -> str:
    """Envoy's extractJWT: the base64url+dot run after the prefix, or the whole value if there is none."""
    start = after
    while start < len(value) and value[start] not in _B64URL_DOT:
        start += 1
    if start >= len(value):
        return value
    end = start
    while end < len(value) and value[end] in _B64URL_DOT:
        end += 1
    return value[start:end]


def _sanitize_audience(aud: str) -> str:
    """jwt_verify_lib's CheckAudience: ignore an http(s):// prefix and a trailing slash."""
    for scheme in ("http://", "https://"):
        if aud.startswith(scheme):
            aud = aud[len(scheme):]
            break
    return aud[:-1] if aud.endswith("/") else aud


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _candidates(jwks: PyJWKSet, header: Mapping[str, Any]) -> list[Any]:
    """Keys that may have signed: matching `kid` (or keys without one), and a compatible `alg`."""
    kid, alg = header.get("kid"), header.get("alg")
    out = []
    for k in jwks.keys:
        if kid is not None and k.key_id not in (kid, None):
            continue
        key_alg = getattr(k, "_jwk_data", {}).get("alg")
        if key_alg and key_alg != alg:
            continue
        out.append(k)
    return sorted(out, key=lambda k: k.key_id != kid)


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name not in out:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out[name] = value
    return out
