"""TLS contexts with ALPN for the L7 data path, built from the same material as the L4 ones.

HTTP listeners must negotiate `h2` / `http/1.1` (curl, nghttp, grpc and the peer sidecar pick
the codec by ALPN), and the L7 upstream pools offer exactly the protocol they will speak. The
L4 contexts in `tls.ContextHolder` stay ALPN-free, so a `tcp` port never claims to speak HTTP.
These contexts follow the holder: rebuilt once per certificate version (on first use after a
rotation), and the server one moves a handshake to the newest context at ClientHello exactly
like the L4 holder does (same `CERT_REQUIRED`, same minimum version: pitfall P7).
"""

from __future__ import annotations

import ssl
from typing import Any

from secmesh.sidecar.tls import ContextHolder, build_client_context, build_server_context

SERVER_ALPN = ["h2", "http/1.1"]


class AlpnContexts:
    def __init__(self, holder: ContextHolder, *, min_version: str = "1.3",
                 ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20") -> None:
        self.holder = holder
        self._kw = {"min_version": min_version, "ciphers_tls12": ciphers_tls12}
        self._version = -1
        self._server: ssl.SSLContext | None = None
        self._clients: dict[str, ssl.SSLContext] = {}

    def _sync(self) -> Any:
        state = self.holder.state
        if state is None:
            raise RuntimeError("no certificate held yet")
        if state.version != self._version:
            self._version = state.version
            self._server = None
            self._clients = {}
        return state

    @property
    def server(self) -> ssl.SSLContext:
        state = self._sync()
        if self._server is None:
            ctx = build_server_context(state.material, **self._kw)
            ctx.set_alpn_protocols(SERVER_ALPN)
            ctx.sni_callback = self._to_newest
            self._server = ctx
        return self._server

    def client(self, alpn: str) -> ssl.SSLContext:
        state = self._sync()
        ctx = self._clients.get(alpn)
        if ctx is None:
            ctx = build_client_context(state.material, **self._kw)
            ctx.set_alpn_protocols([alpn])
            self._clients[alpn] = ctx
        return ctx

    def _to_newest(self, sslobj: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> None:
        newest = self.server
        if ctx is not newest:
            sslobj.context = newest
        return None
