"""Remote key sets for RequestAuthentication: where they come from and when to fetch them. Pure.

A `jwtRules` entry names its keys three ways (Istio's JWTRule): inline `jwks` (used as is;
`jwksUri` is then ignored), `jwksUri`, or neither — then the keys are found by OpenID
Connect discovery of the issuer: `<issuer>/.well-known/openid-configuration` names a
`jwks_uri` (OIDC Discovery 1.0 §4; a trailing `/` of the issuer is removed first). The
discovery URL is itself the cache key for such a rule, so the fetcher (`jwks_http.py`)
follows it to the JWKS and the cache never has to know the difference.

`JwksCache` is the state machine the sidecar's refresher drives, with time passed in:

    unknown ──fetch ok──► fresh ──refresh_interval──► due ──fetch ok──► fresh
       │                                              │
       └──fetch failed──► backing off (retry_initial, doubling up to retry_max)

A failed fetch or a bad document never drops keys that were good before (istio/istio#58101
"JWKS is dropped unexpectedly on connection problems"); it only schedules the next attempt
sooner. Nothing here blocks: until the first good document arrives, `keys()` is None and
a token that needs those keys fails with Envoy's "Jwks remote fetch is failed" (401),
while requests without a token pass (istio/istio#37456, #39411: a JWKS outage must neither
block start-up nor reject anonymous traffic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWKSet

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
REFRESH_INTERVAL = 20 * 60.0   # istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL default
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0


def discovery_uri(issuer: str) -> str | None:
    """The OpenID configuration URL of an issuer, or None when the issuer is not an http(s) URL."""
    if not issuer.startswith(("https://", "http://")):
        return None
    return issuer.rstrip("/") + DISCOVERY_SUFFIX


def is_discovery_uri(uri: str) -> bool:
    return uri.split("?", 1)[0].endswith(DISCOVERY_SUFFIX)


def jwks_uri_from_discovery(text: str) -> str:
    """`jwks_uri` from an OpenID configuration document; ValueError when absent or not http(s)."""
    import json

    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"OpenID configuration is not JSON: {exc}") from exc
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
        raise ValueError(f"invalid jwks_uri {uri!r} in OpenID configuration")
    return uri


@dataclass(frozen=True, slots=True)
class JwksState:
    """One URI's standing, for the admin endpoint and logs."""

    uri: str
    has_keys: bool
    fetched_at: float | None      # last good document
    failures: int                 # consecutive failures since then
    next_attempt: float
    last_error: str

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "has_keys": self.has_keys, "fetched_at": self.fetched_at,
                "failures": self.failures, "next_attempt": self.next_attempt, "last_error": self.last_error}


class JwksCache:
    """Remote key sets by URI, with refresh and failure back-off decided from an injected `now`."""

    def __init__(self, refresh_interval: float = REFRESH_INTERVAL, retry_initial: float = RETRY_INITIAL,
                 retry_max: float = RETRY_MAX) -> None:
        self.refresh_interval, self.retry_initial, self.retry_max = refresh_interval, retry_initial, retry_max
        self._keys: dict[str, PyJWKSet] = {}
        self._next: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._fetched: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._error: dict[str, str] = {}

    def keys(self, uri: str) -> PyJWKSet | None:
        return self._keys.get(uri)

    def due(self, uri: str, now: float) -> bool:
        """Should `uri` be fetched now? True for a URI never tried."""
        return now >= self._next.get(uri, 0.0)

    def update(self, uri: str, text: str, now: float) -> bool:
        """Store a fetched document. A bad one counts as a failure and keeps the old keys."""
        try:
            keys = PyJWKSet.from_json(text)
        except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, TypeError, KeyError) as exc:
            self.failed(uri, now, f"bad JWKS document: {exc}"[:200])
            return False
        self._keys[uri] = keys
        self._backoff.pop(uri, None)
        self._failures.pop(uri, None)
        self._error.pop(uri, None)
        self._fetched[uri] = now
        self._next[uri] = now + self.refresh_interval
        return True

    def failed(self, uri: str, now: float, error: str = "") -> None:
        """A fetch failed: retry after retry_initial, doubling up to retry_max; keys stay."""
        delay = min(self._backoff.get(uri, self.retry_initial / 2) * 2, self.retry_max)
        self._backoff[uri] = delay
        self._next[uri] = now + delay
        self._failures[uri] = self._failures.get(uri, 0) + 1
        if error:
            self._error[uri] = error

    def retain(self, uris: set[str] | list[str] | tuple[str, ...]) -> None:
        """Forget every URI not in `uris` (the policies no longer name it)."""
        keep = set(uris)
        for table in (self._keys, self._next, self._backoff, self._fetched, self._failures, self._error):
            for uri in [u for u in table if u not in keep]:
                del table[uri]

    def state(self, uri: str) -> JwksState:
        return JwksState(uri, uri in self._keys, self._fetched.get(uri), self._failures.get(uri, 0),
                         self._next.get(uri, 0.0), self._error.get(uri, ""))

    def snapshot(self) -> list[dict[str, Any]]:
        uris = sorted(set(self._next) | set(self._keys))
        return [self.state(u).to_dict() for u in uris]
