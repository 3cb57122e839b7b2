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

`InboundAuto` / `OutboundAuto` serve `protocol: auto` ports: the same L4 stages, then ALPN or
the first bytes (`protocol_sniff`) choose between the HTTP session above and the TCP splice of
`connection.py`, per connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from secmesh.sidecar import metrics
from secmesh.sidecar.authz_policy import NEEDS_REQUEST_NO_L7, refuse_tcp
from secmesh.sidecar.codec.headers import xfcc_value
from secmesh.sidecar.connection import InboundConnection, OutboundConnection, _Downstream
from secmesh.sidecar.flow import Pipe
from secmesh.sidecar.http_proxy import HttpSession
from secmesh.sidecar.protocol_sniff import TCP, TIMEOUT_TCP, by_alpn, sniff


class _HttpConn:
    """Mixin over a `_Downstream`: buffer until the session exists, then forward every callback."""

    session: HttpSession | None = None
    transport: Any
    ctx: Any
    _nread = 0
    _early: list[bytes] | None = None

    def wire_protocol(self) -> str:
        s = self.session
        return (s.protocol if s is not None else "") or "http"

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


# === protocol: auto ================================================================================


class _AutoConn(_HttpConn):
    """`protocol: auto`: the L4 stages, then ALPN or the first bytes pick an HTTP session or a TCP splice.

    Authorization stays where it is for every port: right after the handshake, before a byte is
    read (decided with the HTTP rule set, since the connection may be HTTP). Then `setup` reads
    (bounded by `protocol_sniff.MAX_SNIFF` bytes and `protocol_detection_timeout`) until
    `protocol_sniff.sniff` decides. The bytes read so far are handed on untouched: replayed into
    the HTTP session, or written to the upstream first. A connection that turns out to be TCP
    although its policies need request attributes is refused (`authz_policy.refuse_tcp`).
    """

    _proto: str | None = None       # None while sniffing; then http1 / http2 / tcp
    _buf = b""
    _eof = False
    _timer: asyncio.TimerHandle | None = None
    _waiter: asyncio.Future[str | None] | None = None

    def wire_protocol(self) -> str:
        return self._proto or "undetected"      # http1 / http2 / tcp, as the metric labels them

    # -- asyncio callbacks: sniffing, then whichever path was chosen -------------------------------

    def data_received(self, data: bytes) -> None:
        p = self._proto
        if p == TCP:
            Pipe.data_received(self, data)  # type: ignore[arg-type]
        elif p is not None:
            _HttpConn.data_received(self, data)
        else:
            self._buf += data
            if self._waiter is None:            # read before setup began: hold it, stop reading
                self.transport.pause_reading()
            else:
                self._decide(False)

    def eof_received(self) -> bool | None:
        p = self._proto
        if p == TCP:
            return Pipe.eof_received(self)  # type: ignore[arg-type]
        if p is not None:
            return _HttpConn.eof_received(self)
        self._eof = True
        if self._waiter is not None:
            self._decide(True)
        return None if self.is_tls else True    # plaintext: keep our write side for the answer

    def pause_writing(self) -> None:
        if self._proto == TCP:
            Pipe.pause_writing(self)  # type: ignore[arg-type]
        else:
            _HttpConn.pause_writing(self)

    def resume_writing(self) -> None:
        if self._proto == TCP:
            Pipe.resume_writing(self)  # type: ignore[arg-type]
        else:
            _HttpConn.resume_writing(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_timer()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        super().connection_lost(exc)

    # -- detection -----------------------------------------------------------------------------------

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _decide(self, final: bool) -> None:
        proto = sniff(self._buf, final=final)
        if proto is not None:
            self._settle(proto, proto)

    def _on_timeout(self) -> None:
        self._timer = None
        if self._proto is None and not self.closed:
            proto = sniff(self._buf, final=True)
            self._settle(proto, TIMEOUT_TCP if proto == TCP else proto)  # type: ignore[arg-type]

    def _settle(self, proto: str, label: str) -> None:
        """Fix the protocol; queue what was read where the chosen path replays it from."""
        self._stop_timer()
        self._proto = proto
        buf, self._buf = self._buf, b""
        if buf:
            if proto == TCP:
                self._pending = [buf]           # `flow.link` writes it upstream before anything else
            else:
                self._early = [buf]             # `start_session` feeds it to the codec first
                self._nread += len(buf)
        if not self.closed:
            self.transport.pause_reading()      # the chosen path resumes once it is set up
        metrics.protocol_detected(self.ctx.name, label).inc()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(proto)

    # -- set-up ------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        ctx = self.ctx
        sslobj = self.transport.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        self._waiter = waiter = ctx.loop.create_future()
        proto = by_alpn(alpn)
        if proto is not None:
            self._settle(proto, proto)
        else:
            self._decide(self._eof)
            if self._proto is None:
                self.result = "forwarded"       # admitted; the idle sweep may close a silent one
                timeout = ctx.cfg.protocol_detection_timeout
                if timeout > 0:
                    self._timer = ctx.loop.call_later(timeout, self._on_timeout)
                self.transport.resume_reading()
        if await waiter is None or self.closed:  # gone while sniffing
            self.result = "client_gone"
            return
        if self._proto == TCP:
            why = refuse_tcp(self.authz_code)
            if why is not None:
                metrics.authz(ctx.name, "deny", NEEDS_REQUEST_NO_L7, self.policy or "").inc()
                self.fail("denied", why, code=NEEDS_REQUEST_NO_L7)
                return
            await self.tcp_setup()
            if self._eof and self.peer is not None:
                Pipe.eof_received(self)  # type: ignore[arg-type]  # the client half-closed while we sniffed
            return
        await self.http_setup()
        if self._eof and self.session is not None:
            self.session.eof_received()

    async def tcp_setup(self) -> None:
        raise NotImplementedError

    async def http_setup(self) -> None:
        raise NotImplementedError


class InboundAuto(_AutoConn, InboundHttp):
    async def tcp_setup(self) -> None:
        await InboundConnection.setup(self)

    async def http_setup(self) -> None:
        await InboundHttp.setup(self)


class OutboundAuto(_AutoConn, OutboundHttp):
    async def tcp_setup(self) -> None:
        await OutboundConnection.setup(self)  # type: ignore[arg-type]

    async def http_setup(self) -> None:
        await OutboundHttp.setup(self)
