"""JWKS over real HTTP on loopback: OIDC discovery, refresh, failure back-off that keeps the keys.

A thread-based `http.server` plays the identity provider (`/.well-known/openid-configuration`
→ `jwks_uri`); the synchronous fetcher, the `JwksCache` state machine and the authenticator
are the real ones, with time injected.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from secmesh.policy.jwks import JwksCache
from secmesh.policy.jwks_http import UrllibJwksFetcher, refresh_due
from secmesh.policy.load import loads_policies
from secmesh.policy.model import Workload
from secmesh.policy.requestauth import RequestAuthenticator
from tests.support.tokens import TokenIssuer

NOW = 1_800_000_000.0


class Idp:
    """What the fake identity provider serves; tests flip `status`/`jwks` between requests."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.status = 200
        self.hits: list[str] = []
        self.base = ""


@pytest.fixture()
def idp() -> Iterator[Idp]:
    state = Idp()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            state.hits.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                self._send(200, {"issuer": state.base, "jwks_uri": state.base + "/keys"})
            elif self.path == "/keys":
                self._send(state.status, state.jwks)
            elif self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", state.base + "/keys")
                self.end_headers()
            elif self.path == "/to-file":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.end_headers()
            elif self.path == "/huge":
                self._send(200, {"keys": [], "pad": "x" * (2 << 20)})
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def issuer_only(issuer: str) -> RequestAuthenticator:
    doc = ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n"
           f"  jwtRules:\n  - issuer: {issuer}\n    audiences: [api]\n")
    return RequestAuthenticator(loads_policies(doc), Workload("default", {}))


def test_discovery_refresh_and_outage(idp: Idp) -> None:
    signer = TokenIssuer(issuer=idp.base)
    idp.jwks = signer.jwks()
    authn = issuer_only(idp.base)
    assert authn.remote_uris == [idp.base + "/.well-known/openid-configuration"]
    cache = JwksCache(refresh_interval=300, retry_initial=2, retry_max=30)
    fetcher = UrllibJwksFetcher()
    tok = signer.token(audience="api", now=NOW, sub="alice")
    hdr = {"authorization": f"Bearer {tok}"}

    # before any fetch: the token fails, anonymous requests pass, nothing blocks
    assert authn.authenticate(hdr, "", NOW, cache).message == "Jwks remote fetch is failed"
    assert authn.authenticate({}, "", NOW, cache).status == "none"

    assert refresh_due(cache, fetcher, authn.remote_sources, NOW) == []
    assert idp.hits == ["/.well-known/openid-configuration", "/keys"]
    assert authn.authenticate(hdr, "", NOW, cache).principal == f"{idp.base}/alice"

    # not due yet: no traffic
    assert refresh_due(cache, fetcher, authn.remote_sources, NOW + 10) == [] and len(idp.hits) == 2

    # the IdP fails at refresh time: back off, keep serving with the last good keys
    idp.status = 503
    failures = refresh_due(cache, fetcher, authn.remote_sources, NOW + 300)
    assert len(failures) == 1 and "503" in failures[0][1]
    assert authn.authenticate(hdr, "", NOW + 300, cache).status == "ok"
    st = cache.state(authn.remote_uris[0])
    assert st.failures == 1 and st.next_attempt == NOW + 302

    # it comes back with a rotated key: the next attempt picks it up
    rotated = TokenIssuer(issuer=idp.base)
    idp.status, idp.jwks = 200, rotated.jwks()
    assert refresh_due(cache, fetcher, authn.remote_sources, NOW + 302) == []
    new_tok = rotated.token(audience="api", now=NOW + 302, sub="bob")
    assert authn.authenticate({"authorization": f"Bearer {new_tok}"}, "", NOW + 302, cache).principal.endswith("/bob")
    assert authn.authenticate(hdr, "", NOW + 302, cache).message.startswith("Jwks doesn't have key")  # old kid is gone


def test_explicit_jwks_uri_with_redirect(idp: Idp) -> None:
    signer = TokenIssuer(issuer="https://issuer.example")
    idp.jwks = signer.jwks()
    text = UrllibJwksFetcher().fetch(idp.base + "/moved", 5.0)
    assert json.loads(text) == signer.jwks()


@pytest.mark.parametrize("path,error", [("/to-file", "not allowed"), ("/huge", "too large"), ("/nope", "404")])
def test_fetch_refusals(idp: Idp, path: str, error: str) -> None:
    with pytest.raises(Exception) as exc:
        UrllibJwksFetcher().fetch(idp.base + path, 5.0)
    assert error in str(exc.value)


def test_unreachable_idp_is_a_failure_not_a_hang() -> None:
    from tests.support.proc import free_port

    cache = JwksCache(retry_initial=1)
    uri = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    failures = refresh_due(cache, UrllibJwksFetcher(), [(uri, 2.0)], NOW)
    assert failures and cache.keys(uri) is None and cache.state(uri).failures == 1
