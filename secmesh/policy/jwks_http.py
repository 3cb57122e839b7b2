"""A simple, synchronous `JwksFetcher` over urllib (http/https only).

Kept out of `requestauth.py` so the core stays I/O-free; the sidecar runs this in an
executor (or replaces it) and feeds `JwksCache.update` / `JwksCache.failed`.
"""

from __future__ import annotations

import urllib.request

MAX_JWKS_BYTES = 1 << 20


class UrllibJwksFetcher:
    def fetch(self, uri: str, timeout: float = 5.0) -> str:
        if not uri.startswith(("http://", "https://")):
            raise ValueError(f"unsupported JWKS URI scheme: {uri}")
        req = urllib.request.Request(uri, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            body = resp.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        return body.decode("utf-8")
