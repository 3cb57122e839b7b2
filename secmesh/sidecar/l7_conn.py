"""Listener connections of `protocol: http` ports: the L4 stages, then an `HttpSession`.

`InboundHttp` runs exactly the inbound pipeline of `connection.py` (handshake done by the
listener, peer SPIFFE ID, L4 authz that may refuse before a byte is read) and then, instead of
splicing to one upstream connection, hands the transport to an `HttpSession` with what the
request path needs from the connection: the negotiated ALPN, the XFCC element of the verified
peer, the client address, and the policy engine + residual of the connection-time decision.
`OutboundHttp` does the same for plaintext from the local app (no peer identity; XFCC is
stripped so the app cannot forge one towards its peers).

Registration, limits, idle sweeping, drain and the per-connection log line stay the
`_Downstream` ones; `nbytes` counts both directions so the idle sweep sees an active stream.
"""

from __future__ import annotations

from typing import Any

from secmesh.sidecar.codec.headers import xfcc_value
from secmesh.sidecar.connection import InboundConnection, _Downstream
from secmesh.sidecar.http_proxy import HttpSession


class _HttpConn:
    """Mixin over a `_Downstream`: buffer until the session exists, then forward every callback."""

    session: HttpSession | None = None
    transport: Any
    ctx: Any
    _nread = 0
    _early: list[bytes] | None = None

    @property
    def nbytes(self) -> int:       # type: ignore[override]
        s = self.session
        return self._nread + (s.bytes_out if s is not None else 0)

    @nbytes.setter
    def nbytes(self, value: int) -> None:
        self._nread = value

    def data_received(self, data: bytes) -> None:
        self._nread += len(data)
        s = self.session
        if s is not None:
            s.data_received(data)
            return
        if self._early is None:
            self._early = []
        self._early.append(data)
        self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        s = self.session
        return s.eof_received() if s is not None else None

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.session is not None:
            self.session.connection_lost(exc)
        super().connection_lost(exc)  # type: ignore[misc]

    def close(self) -> None:
        """Idle timeout: say goodbye the protocol's way (GOAWAY for h2), then close after the flush."""
        s = self.session
        if s is not None and not s.closed:
            s.drain()
            s.flusher.flush()
        super().close()  # type: ignore[misc]

    def drain(self) -> None:
        """SIGTERM: no new requests (GOAWAY / `Connection: close`); open ones finish."""
        s = self.session
        if s is not None and not s.closed:
            s.drain()
            s.flusher.flush()

    def start_session(self, *, tls: bool, peer_id: str | None, xfcc: bytes | None, engine: Any,
                      residual: Any) -> None:
        t = self.transport
        sslobj = t.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        src = t.get_extra_info("peername") or ("", 0)
        env = self.ctx.l7
        s = self.session = HttpSession(env, t, tls=tls, alpn=alpn, peer_id=peer_id, xfcc=xfcc, client_ip=src[0],
                                       engine=engine, residual=residual)
        self.result = "forwarded"
        t.set_write_buffer_limits(high=self.ctx.high_water, low=self.ctx.low_water)
        early, self._early = self._early, None
        t.resume_reading()
        for data in early or ():
            s.data_received(data)
        s.mark()
        env.flusher.flush()


class InboundHttp(_HttpConn, InboundConnection):
    async def setup(self) -> None:
        xfcc = None
        if self.is_tls:
            sslobj = self.transport.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            state = self.ctx.holder.state
            ours = state.material.spiffe_id if state is not None else None
            xfcc = xfcc_value(by=str(ours) if ours else None, peer_cert_der=der, peer_uri=self.peer_id)
        engine = self.engine                     # the engine whose connection-time decision left `residual`
        self.start_session(tls=self.is_tls, peer_id=self.peer_id, xfcc=xfcc, engine=engine,
                           residual=self.residual if engine is not None else None)


class OutboundHttp(_HttpConn, _Downstream):
    async def setup(self) -> None:
        self.start_session(tls=False, peer_id=None, xfcc=None, engine=None, residual=None)

