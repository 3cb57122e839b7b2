"""Upstream connection pools: HTTP/1.1 keep-alive, one multiplexed HTTP/2 connection per endpoint.

An `UpstreamConn` is the asyncio protocol of one upstream connection; it drives a client codec
and hands each event to the exchange that owns the stream. `EndpointPool` keeps, per endpoint
and protocol, idle HTTP/1.1 connections (LIFO, closed after `idle_timeout`) or the HTTP/2
connections with room for another stream (a second one is opened only when the first reaches
`max_streams_per_connection` or the peer's MAX_CONCURRENT_STREAMS). Concurrent callers that
find no h2 connection wait for the one being dialled instead of each dialling their own.

Outbound mTLS reuses the L4 rules: the workload certificate from the holder, the server's
SPIFFE ID read from its URI SAN (`tls.peer_spiffe_id`) and required to be one of the cluster's
`peer_ids`; ALPN offers exactly the protocol the pool will speak (`l7_tls.AlpnContexts`).

HTTP/2 keepalive (Envoy's `connection_keepalive`, decided by `upstream.Keepalive`): a connection
whose peer went silent without a FIN is aborted after a PING goes unanswered, so its streams end
as upstream resets (retried by the usual rules) and new streams dial afresh, instead of hanging
until the request timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from hyperframe.frame import PingFrame

from secmesh.errors import IdentityError
from secmesh.log import log_event
from secmesh.sidecar import l7_metrics
from secmesh.sidecar.codec.http1_client import H1ClientCodec
from secmesh.sidecar.codec.http2 import H2ClientCodec
from secmesh.sidecar.codec.stream import ConnectionError, ErrorCode, GoAway, Reason, StreamReset, StreamWritable
from secmesh.sidecar.connection import nodelay
from secmesh.sidecar.l7_flow import CodecSide
from secmesh.sidecar.pool_limit import DIAL, ConnectionLimit
from secmesh.sidecar.tls import classify_handshake_error, peer_spiffe_id
from secmesh.sidecar.upstream import DEAD, PING, ClusterState, Endpoint, Keepalive

if TYPE_CHECKING:
    from secmesh.sidecar.clusters import ClusterManager

HTTP1, HTTP2 = "http1", "http2"
_ALPN = {HTTP1: "http/1.1", HTTP2: "h2"}
HIGH_WATER, LOW_WATER = 256 * 1024, 64 * 1024
log = logging.getLogger("secmesh.sidecar.upstream")


class UpstreamFailure(Exception):
    """Connecting to an endpoint failed; `reason` is a closed label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UpstreamConn(asyncio.Protocol, CodecSide):
    def __init__(self, pool: EndpointPool) -> None:
        CodecSide.__init__(self, pool.flusher)
        self.pool = pool
        self.streams: dict[int, Any] = {}
        self.idle_since = 0.0
        self.peer_id: str | None = None
        self._early: list[bytes] = []
        self.started = False
        self.last_rx = 0.0              # loop time of the last bytes received (h2 keepalive)
        self.ka: Keepalive | None = None
        self._keepalive: asyncio.TimerHandle | None = None

    # --- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        nodelay(transport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)  # type: ignore[attr-defined]

    def start(self, codec: Any) -> None:
        self.codec = codec
        self.started = True
        self.multiplexed = codec.protocol == HTTP2
        self.mark()
        early, self._early = self._early, []
        for data in early:
            self._dispatch(codec.receive(data))

    def data_received(self, data: bytes) -> None:
        if self._keepalive is not None:
            self.last_rx = self.pool.manager.loop.time()
        if self.codec is None:
            self._early.append(data)
            return
        self._dispatch(self.codec.receive(data))
        if self.multiplexed:              # h2 answers frames by itself; HTTP/1.1 receiving never writes
            self.mark()
        self.flusher.flush()

    def eof_received(self) -> bool | None:
        if self.codec is not None:
            self._dispatch(self.codec.receive_eof())
            self.flusher.flush()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self.pool.lost(self)
        streams, self.streams = self.streams, {}
        for sid, ex in streams.items():
            ex.upstream_event(StreamReset(sid, ErrorCode.CONNECT_ERROR, True, "upstream_closed"))
        self.flusher.flush()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for ex in list(self.streams.values()):
            ex.upstream_writable()
        self.flusher.flush()

    def _dispatch(self, events: list) -> None:
        streams = self.streams
        for ev in events:
            t = type(ev)
            if t is ConnectionError:
                l7_metrics.upstream(self.pool.cluster.name, "protocol_error").inc()
                broken, self.streams = self.streams, {}
                for sid, ex in broken.items():
                    ex.upstream_event(StreamReset(sid, ErrorCode.PROTOCOL_ERROR, True, ev.reason))
                streams = self.streams
            elif t is GoAway:
                self.pool.retire(self)
            elif t is StreamWritable:
                ex = streams.get(ev.stream_id)
                if ex is not None:
                    ex.upstream_writable()
            else:
                ex = streams.get(ev.stream_id)
                if ex is not None:
                    ex.upstream_event(ev)

    # --- h2 keepalive ----------------------------------------------------------------------------

    def start_keepalive(self) -> None:
        """Arm the PING timer (h2 only, `h2_keepalive_interval` > 0)."""
        loop, cfg = self.pool.manager.loop, self.pool.cluster.cfg
        self.last_rx = loop.time()
        self.ka = Keepalive(float(cfg.h2_keepalive_interval), float(cfg.h2_keepalive_timeout))
        self._keepalive = loop.call_later(self.ka.interval, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        self._keepalive = None
        if self.closed:
            return
        loop, ka = self.pool.manager.loop, self.ka
        assert ka is not None
        action, delay = ka.step(loop.time(), self.last_rx)
        if action == DEAD:
            self._keepalive_expired(loop.time())
            return
        if action == PING:        # a whole frame after the codec's own output, so frames stay intact (the
            self.flush_now()      # codec has no PING call; h2 reports the ACK as an event the codec drops)
            if not self.closed and self.transport is not None:
                self.transport.write(PingFrame(0, opaque_data=ka.pings.to_bytes(8, "big")).serialize())
        self._keepalive = loop.call_later(delay, self._keepalive_tick)

    def _keepalive_expired(self, now: float) -> None:
        pool = self.pool
        pool.m_keepalive.inc()
        log_event(log, logging.WARNING, "upstream h2 keepalive timed out; closing the connection",
                  cluster=pool.cluster.name, upstream=pool.endpoint.address, streams=len(self.streams),
                  silent_s=round(now - self.last_rx, 2))
        pool.retire(self)                    # new streams go to a fresh connection
        self.closed = True
        if self.transport is not None:
            self.transport.abort()           # connection_lost resets the streams: retry rules apply

    # --- what an exchange uses ------------------------------------------------------------------

    @property
    def can_open(self) -> bool:
        return not self.closed and self.codec.can_open_stream and (
            not self.multiplexed or len(self.streams) < self.pool.max_streams)

    def open(self, ex: Any, method: bytes, authority: bytes, path: bytes, scheme: bytes,
             headers: list, end_stream: bool, upgrade: bytes = b"") -> int:
        if upgrade:                               # HTTP/1.1 only: the codec writes Connection/Upgrade itself
            sid = self.codec.send_request(method, authority, path, scheme, headers, end_stream, upgrade=upgrade)
        else:
            sid = self.codec.send_request(method, authority, path, scheme, headers, end_stream)
        self.streams[sid] = ex
        self.mark()
        return sid

    def done(self, sid: int, *, reset: bool = False) -> None:
        """The exchange is finished with its stream; an h1 connection goes back to the pool."""
        self.streams.pop(sid, None)
        self.forget(sid)
        if self.closed:
            return
        if reset:
            self.codec.reset_stream(sid, ErrorCode.CANCEL)
            self.mark()
        if not self.multiplexed:
            if self.codec.can_open_stream and not reset:
                self.pool.release(self)
            else:
                self.closed = True
                self.mark()
                self.transport.close()  # type: ignore[union-attr]


class EndpointPool:
    """Connections to one endpoint, in one protocol."""

    def __init__(self, manager: ClusterManager, cluster: ClusterState, endpoint: Endpoint, protocol: str) -> None:
        self.manager = manager
        self.flusher = manager.flusher
        self.cluster = cluster
        self.endpoint = endpoint
        self.protocol = protocol
        cfg = cluster.cfg
        self.max_streams = cfg.max_streams_per_connection
        self.max_idle = cfg.max_idle_per_endpoint
        self.limit = ConnectionLimit(cfg.max_connections_per_endpoint, cfg.max_pending_requests, manager.loop)
        self.idle: list[UpstreamConn] = []
        self.h2: list[UpstreamConn] = []
        self._dialling: asyncio.Future[UpstreamConn] | None = None
        self.m_active = l7_metrics.upstream_active(cluster.name)
        self.m_keepalive = l7_metrics.upstream(cluster.name, "h2_keepalive_timeout")   # bound once (P17)
        self.m_unbuffered = l7_metrics.upstream(cluster.name, "unbuffered")

    def try_acquire(self) -> UpstreamConn | None:
        if self.protocol == HTTP2:
            for c in self.h2:
                if c.can_open:
                    return c
            return None
        idle = self.idle
        while idle:
            c = idle.pop()
            if c.can_open:
                return c
        return None

    async def acquire(self) -> UpstreamConn:
        """A connection with room for one more request; h2 callers share one dial at a time,
        HTTP/1.1 callers beyond `max_connections_per_endpoint` queue (`pool_limit.py`)."""
        while True:
            c = self.try_acquire()
            if c is not None:
                return c
            if self.protocol != HTTP2:
                got = await self._h1_slot()
                if got is not DIAL:
                    return got
                try:
                    return await self._connect()
                except BaseException:
                    self.limit.freed()
                    raise
            if self._dialling is None:
                self._dialling = asyncio.ensure_future(self._connect())
                self._dialling.add_done_callback(self._dialled)
            c = await asyncio.shield(self._dialling)
            if c.can_open:
                return c
            # full already (the callers woken before us took its streams): look again, dial once more

    async def _h1_slot(self) -> Any:
        """DIAL once a connection slot is ours, or a connection another request handed back."""
        limit = self.limit
        while not limit.take():
            fut = limit.waiter()
            if fut is None:
                raise UpstreamFailure("upstream_overflow", f"{self.endpoint.address}: {limit.limit} connections "
                                      f"busy and {limit.max_pending} requests already waiting")
            try:
                got = await fut
            except asyncio.CancelledError:
                back = limit.abandon(fut)
                if back is not None:
                    self.release(back)
                raise
            if got is DIAL or got.can_open:
                return got
        return DIAL

    def _dialled(self, fut: asyncio.Future[UpstreamConn]) -> None:
        self._dialling = None
        if not fut.cancelled():
            fut.exception()             # retrieved: waiters got it; no "never retrieved" warning

    async def _connect(self) -> UpstreamConn:
        m = self.manager
        cfg = self.cluster.cfg
        ep = self.endpoint
        kw: dict[str, Any] = {}
        timeout = float(cfg.connect_timeout)
        if cfg.tls:
            kw = {"ssl": m.contexts.client(_ALPN[self.protocol]), "server_hostname": cfg.sni or None,
                  "ssl_handshake_timeout": timeout}
            timeout *= 2
        try:
            _, conn = await asyncio.wait_for(m.loop.create_connection(lambda: UpstreamConn(self), ep.host, ep.port,
                                                                      **kw), timeout)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise UpstreamFailure("tls_" + classify_handshake_error(exc), f"{ep.address}: TLS: {exc}") from None
        except asyncio.TimeoutError:
            raise UpstreamFailure("connect_timeout", f"{ep.address}: connect timed out") from None
        except OSError as exc:
            raise UpstreamFailure("connect_failed", f"{ep.address}: {exc.strerror or exc}") from None
        if cfg.tls:
            try:
                conn.peer_id = str(peer_spiffe_id(conn.transport.get_extra_info("peercert"), m.trust_domain))
            except IdentityError as exc:
                conn.transport.abort()
                raise UpstreamFailure("upstream_identity", f"{ep.address}: {exc.message}") from None
            if conn.peer_id not in cfg.peer_ids:
                conn.transport.abort()
                raise UpstreamFailure("unexpected_peer_id", f"{ep.address} presented {conn.peer_id}, "
                                      f"expected one of {sorted(cfg.peer_ids)}")
        if self.protocol == HTTP2:
            codec: Any = H2ClientCodec(m.h2_settings)
            self.h2.append(conn)
        else:
            codec = H1ClientCodec()
        conn.start(codec)
        if self.protocol == HTTP2 and cfg.h2_keepalive_interval > 0:
            conn.start_keepalive()
        self.m_active.inc()
        l7_metrics.upstream(self.cluster.name, "connect").inc()
        self.flusher.flush()
        return conn

    def release(self, conn: UpstreamConn) -> None:
        if self.limit.hand_over(conn):
            return
        if len(self.idle) >= self.max_idle:
            conn.closed = True
            conn.transport.close()  # type: ignore[union-attr]
            return
        conn.idle_since = self.manager.loop.time()
        self.idle.append(conn)

    def retire(self, conn: UpstreamConn) -> None:
        if conn in self.h2:
            self.h2.remove(conn)

    def lost(self, conn: UpstreamConn) -> None:
        if not conn.started:
            return
        self.m_active.dec()
        if not conn.multiplexed:
            self.limit.freed()
        if conn in self.idle:
            self.idle.remove(conn)
        self.retire(conn)

    def sweep(self, now: float, idle_timeout: float) -> None:
        for c in [c for c in self.idle if now - c.idle_since >= idle_timeout]:
            self.idle.remove(c)
            c.closed = True
            c.transport.close()  # type: ignore[union-attr]
        for c in [c for c in self.h2 if not c.streams]:
            if not c.idle_since:
                c.idle_since = now
            elif now - c.idle_since >= idle_timeout:
                self.h2.remove(c)
                c.codec.close()
                c.flush_now()
                c.closed = True
                c.transport.close()  # type: ignore[union-attr]
        for c in self.h2:
            if c.streams:
                c.idle_since = 0.0


__all__ = ["EndpointPool", "HTTP1", "HTTP2", "Reason", "UpstreamConn", "UpstreamFailure"]
