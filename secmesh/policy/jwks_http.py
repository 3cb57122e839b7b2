"""A simple, synchronous `JwksFetcher` over urllib (http/https only), with OIDC discovery.

Kept out of `requestauth.py`/`jwks.py` so the core stays I/O-free; the sidecar runs this
in an executor (or replaces it) and feeds `JwksCache.update` / `JwksCache.failed`.

`fetch(uri)` returns JWKS text. When `uri` is an OpenID configuration URL (what
`RequestAuthenticator.remote_uris` lists for a rule with only an `issuer`), the document's
`jwks_uri` is fetched in turn — as istiod's JWKS resolver does for such rules. Redirects
are followed only to http/https, bodies are capped, and every failure raises (the caller
backs off and keeps the previous keys).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from secmesh.policy.jwks import is_discovery_uri, jwks_uri_from_discovery

MAX_JWKS_BYTES = 1 << 20


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never off http/https (no file:, ftp:, data:)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.startswith(("http://", "https://")):
            raise ValueError(f"refusing redirect to non-http(s) URL: {newurl[:100]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _is_jwks(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and "keys" in doc and "jwks_uri" not in doc


class UrllibJwksFetcher:
    def __init__(self, max_bytes: int = MAX_JWKS_BYTES) -> None:
        self.max_bytes = max_bytes

    def fetch(self, uri: str, timeout: float = 5.0) -> str:
        """The JWKS document behind `uri` (following OIDC discovery when `uri` is a discovery URL)."""
        text = self.get(uri, timeout)
        if is_discovery_uri(uri) and not _is_jwks(text):
            text = self.get(jwks_uri_from_discovery(text), timeout)
        return text

    def resolve(self, issuer_discovery_uri: str, timeout: float = 5.0) -> str:
        """The `jwks_uri` an OpenID configuration names (for diagnostics: `policy` tooling, logs)."""
        return jwks_uri_from_discovery(self.get(issuer_discovery_uri, timeout))

    def get(self, uri: str, timeout: float) -> str:
        if not uri.startswith(("http://", "https://")):
            raise ValueError(f"unsupported JWKS URI scheme: {uri[:100]}")
        req = urllib.request.Request(uri, headers={"Accept": "application/json"})
        with _OPENER.open(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            body = resp.read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            raise ValueError("JWKS document too large")
        return body.decode("utf-8")


def refresh_due(cache: Any, fetcher: Any, sources: list[tuple[str, float]], now: float) -> list[tuple[str, str]]:
    """One synchronous refresh round: fetch every due URI, feed the cache. Returns (uri, error) failures.

    The sidecar runs the same steps off its event loop; the CLI and tests call this directly.
    """
    failures = []
    for uri, timeout in sources:
        if not cache.due(uri, now):
            continue
        try:
            text = fetcher.fetch(uri, timeout)
        except Exception as exc:  # noqa: BLE001 — any fetch failure: back off, keep the old keys
            error = f"{type(exc).__name__}: {exc}"[:200]
            cache.failed(uri, now, error)
            failures.append((uri, error))
            continue
        if not cache.update(uri, text, now):
            failures.append((uri, cache.state(uri).last_error))
    return failures
