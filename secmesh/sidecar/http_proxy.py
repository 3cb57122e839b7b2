"""The L7 side of a downstream connection: a server codec, its exchanges, its timers.

`HttpSession` takes over a transport whose connection-time stages (handshake, peer ID, L4
authz) already passed. It picks the codec by ALPN, else by the first bytes (HTTP/2 preface or
an HTTP/1.x request line; `codec.detect`), feeds it, and runs one `Exchange` per request
stream. It is written as an asyncio protocol (`data_received`, `eof_received`,
`pause_writing`, `resume_writing`, `connection_lost`), so the listener's connection either
hands the transport over with `set_protocol` or forwards those calls.

Protocol errors are the codec's to judge: when it reports one (`ConnectionError`), the answer
it queued (400 / 413 / 414 / 431, or GOAWAY) is written, the connection is closed, and only
this connection is affected. A request head that does not complete within `header_timeout`
(slowloris) gets a 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import lru_cache
from typing import Any, Callable

from secmesh.log import log_event
from secmesh.sidecar import l7_metrics
from secmesh.sidecar.codec import detect as codec_detect
from secmesh.sidecar.codec.http1 import H1ServerCodec
from secmesh.sidecar.codec.http1_wire import H1Limits, error_response
from secmesh.sidecar.codec.http2 import H2ServerCodec, H2Settings
from secmesh.sidecar.codec.http2_guard import ResetLimits
from secmesh.sidecar.codec.stream import (
    ConnectionError, Data, ErrorCode, Reason, RequestHeaders, StreamReset, StreamWritable, Trailers, Upgrade,
)
from secmesh.sidecar.http_exchange import Exchange
from secmesh.sidecar.l7_config import HttpConfig
from secmesh.sidecar.l7_flow import CodecSide, Deadlines, Flusher

log = logging.getLogger("secmesh.sidecar.http")
SNIFF_TIMEOUT = 10.0
CONTROL_FLOOD_LIMIT = 1000        # Envoy's max_outbound_control_frames default


class L7Env:
    """What every HTTP connection of one listener (in one worker) shares; built once."""

    def __init__(self, name: str, cfg: HttpConfig, *, loop: asyncio.AbstractEventLoop, flusher: Flusher,
                 authorizer: Any, router: Any, clusters_mgr: Any, access_log: Any = None) -> None:
        self.name = name
        self.cfg = cfg
        self.loop = loop
        self.flusher = flusher
        self.authorizer = authorizer
        self.router = router
        self.clusters_mgr = clusters_mgr
        self.clusters = clusters_mgr.clusters
        self.access_log = access_log          # accesslog.AccessLog or None
        self.deny_header = cfg.deny_header
        self.upstream_protocol = cfg.upstream_protocol
        self.header_timeout = float(cfg.header_timeout)
        self.h1_limits = H1Limits(cfg.max_request_line, cfg.max_header_bytes, cfg.max_headers, cfg.max_body or None)
        self.h2_settings = H2Settings(max_concurrent_streams=cfg.h2_max_concurrent_streams,
                                      initial_window_size=cfg.h2_initial_window,
                                      connection_window=cfg.h2_connection_window,
                                      max_header_list_size=cfg.h2_max_header_list,
                                      resets=ResetLimits(limit=cfg.h2_reset_limit))
        self.deadlines = Deadlines(loop)      # request timeouts (one loop timer per timeout value)
        self.sessions: set[HttpSession] = set()

    @lru_cache(maxsize=4096)  # noqa: B019 - one env per listener, lives as long as the worker
    def m_authz(self, allowed: bool, code: str, policy: str) -> Callable[[], None]:
        """The bound `inc` of the authz counter child (call it to count one decision)."""
        return l7_metrics.incrementer(l7_metrics.authz(self.name, "allow" if allowed else "deny", code, policy))

    @lru_cache(maxsize=64)  # noqa: B019
    def m_requests(self, status: int, origin: str) -> Callable[[], None]:
        return l7_metrics.incrementer(l7_metrics.requests(self.name, l7_metrics.status_class(status), origin))

    def drain(self) -> None:
        for s in list(self.sessions):
            s.drain()
        self.flusher.flush()


class HttpSession(CodecSide):
    def __init__(self, env: L7Env, transport: asyncio.Transport, *, tls: bool, alpn: str | None = None,
                 peer_id: str | None = None, xfcc: bytes | None = None, client_ip: str | None = None,
                 engine: Any = None, residual: Any = None, on_closed: Callable[[], None] | None = None) -> None:
        super().__init__(env.flusher)
        self.env = env
        self.loop = env.loop
        self.transport = transport
        self.tls = tls
        self.peer_id = peer_id
        self.xfcc = xfcc
        self.client_ip = client_ip
        self.engine = engine
        self.residual = residual
        self.on_closed = on_closed
        self.protocol = ""
        self.alog: str | None = None        # the access log's per-connection part (accesslog._conn_part)
        self.streams: dict[int, Exchange] = {}
        self.requests = 0
        self.touched = True
        self._acks_base = 0                  # PING/SETTINGS answers before the current read (flood guard)
        self._flood = False
        self._sniffed = b""
        self._queue: deque[Any] = deque()
        self._processing = False
        self._timer: asyncio.TimerHandle | None = None
        self._lost = False
        env.sessions.add(self)
        proto = codec_detect.by_alpn(alpn)
        if proto:
            self._start_codec(proto)
        else:
            self._timer = self.loop.call_later(SNIFF_TIMEOUT, self._sniff_timeout)

    # === protocol choice ==========================================================================

    def _start_codec(self, proto: str) -> None:
        env = self.env
        self.protocol = proto
        if proto == codec_detect.HTTP2:
            self.codec = H2ServerCodec(env.h2_settings)
            self.multiplexed = True
            self.mark()                       # our SETTINGS
        else:
            self.codec = H1ServerCodec(limits=env.h1_limits, scheme=b"https" if self.tls else b"http")

    def _sniff(self, data: bytes, final: bool) -> bytes | None:
        first = self._sniffed + data
        proto = codec_detect.detect(first, None, port_protocol="http", final=final)
        if proto is None:
            self._sniffed = first
            return None
        self._sniffed = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start_codec(proto)
        return first

    def _sniff_timeout(self) -> None:
        self._timer = None
        if self.codec is None and not self._lost:
            data = self._sniff(b"", True)
            if data:
                self._feed(data)
            else:
                self._close()
        self.flusher.flush()

    # === asyncio protocol =========================================================================

    def data_received(self, data: bytes) -> None:
        self.touched = True
        if self.codec is None:
            first = self._sniff(data, False)
            if first is None:
                return
            data = first
        self._feed(data)
        self.flusher.flush()
        if self._flood:                   # set by pause_writing during that flush
            self._flooded()

    def _feed(self, data: bytes) -> None:
        codec = self.codec
        if self.multiplexed and not self.write_paused:
            self._acks_base = codec.control_replies
        self._process(codec.receive(data))
        if self.multiplexed:
            self.mark()                   # h2 answers frames by itself (SETTINGS/PING acks, WINDOW_UPDATE)
        else:
            self._header_timer()          # (an HTTP/1.1 error answer is marked where the error is handled)
        self.update_reading()

    def eof_received(self) -> bool | None:
        if self.codec is None:
            self._close()
            return None
        self._process(self.codec.receive_eof())
        self.mark()
        self.flusher.flush()
        return None if self.tls else True

    def pause_writing(self) -> None:
        """The client's socket is full. HTTP/2: read nothing more until it drains, or a client with
        wide-open windows that never reads could have us answer stream after stream into memory
        (CVE-2019-9517); HTTP/1.1 holds its next pipelined request instead (`stream_finished`)."""
        self.write_paused = True
        self.stop_reading_when_full = self.multiplexed
        if self.multiplexed and self.codec.control_replies - self._acks_base > CONTROL_FLOOD_LIMIT:
            self._flood = True
        self.update_reading()

    def _flooded(self) -> None:
        """PING / SETTINGS flood (CVE-2019-9512, -9515): one read made us answer more than
        `CONTROL_FLOOD_LIMIT` frames (Envoy's `max_outbound_control_frames`) and the answers
        filled the socket: the peer floods and does not read. Cut it rather than only pausing."""
        self._flood = False
        self.codec.cut(Reason.CONTROL_FLOOD, f"over {CONTROL_FLOOD_LIMIT} PING/SETTINGS answers unread")
        self._process(self.codec.ready_events())
        self.closed = True
        self.transport.abort()            # a GOAWAY would only join the unread queue

    def resume_writing(self) -> None:
        self.write_paused = False
        for ex in list(self.streams.values()):
            ex.downstream_writable()
        if not self.multiplexed and not self.streams and not self.closed and self.codec is not None:
            self._next_requests()                 # the pipelined request `stream_finished` held back
        self.update_reading()
        self.flusher.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.env.sessions.discard(self)
        for sid, ex in list(self.streams.items()):
            ex.request_event(StreamReset(sid, ErrorCode.CANCEL, True, Reason.EOF))
        self.streams.clear()
        self.flusher.flush()
        if self.on_closed is not None:
            self.on_closed()

    # === events ===================================================================================

    def _process(self, events: list) -> None:
        """Dispatch in order; events produced while dispatching (re-entry) wait in `_queue`."""
        if not events:
            return
        q = self._queue
        if self._processing or q:
            q.extend(events)
            if self._processing:
                return
            events = ()
        self._processing = True
        try:
            dispatch = self._dispatch
            for ev in events:
                dispatch(ev)
            while q:
                dispatch(q.popleft())
        finally:
            self._processing = False

    def _dispatch(self, ev: Any) -> None:
        t = type(ev)
        if t is RequestHeaders:
            self.requests += 1
            ex = self.streams[ev.stream_id] = Exchange(self, ev)
            ex.start()
        elif t is Data or t is Trailers or t is StreamReset:
            ex = self.streams.get(ev.stream_id)
            if ex is not None:
                ex.request_event(ev)
        elif t is StreamWritable:
            ex = self.streams.get(ev.stream_id)
            if ex is not None:
                ex.downstream_writable()
        elif t is Upgrade:
            ex = self.streams.get(ev.stream_id)
            if ex is not None and not ex.upgrade:          # CONNECT, or an upgrade we do not tunnel
                ex.reason = "upgrade_unsupported"
                ex.local(501)
        elif t is ConnectionError:
            self._protocol_error(ev)

    def _protocol_error(self, ev: ConnectionError) -> None:
        env = self.env
        l7_metrics.codec_errors(env.name, ev.reason).inc()
        log_event(log, logging.WARNING, "downstream protocol error", listener=env.name, reason=ev.reason,
                  status=ev.http_status, detail=ev.detail[:200], peer_id=self.peer_id, client=self.client_ip,
                  protocol=self.protocol)
        for sid, ex in list(self.streams.items()):
            ex.reason = ev.reason
            ex.request_event(StreamReset(sid, ErrorCode.PROTOCOL_ERROR, True, ev.reason))
        self.mark()

    def stream_finished(self, ex: Exchange) -> None:
        self.streams.pop(ex.sid, None)
        self.forget(ex.sid)
        # HTTP/1.1 behind a full socket: the next pipelined request waits for `resume_writing`, so
        # a client that pipelines and never reads cannot make us buffer response after response.
        if not self.closed and (self.multiplexed or not self.write_paused):
            self._next_requests()

    def _next_requests(self) -> None:
        self._process(self.codec.ready_events())
        if not self.multiplexed:
            self._header_timer()
        self.update_reading()

    # === what exchanges use =======================================================================

    def tunnel_opened(self) -> None:
        """After a 101: the bytes the codec held back are tunnel data now; read on."""
        self._process(self.codec.ready_events())
        self.update_reading()

    def reset(self, sid: int) -> None:
        self.codec.reset_stream(sid, ErrorCode.INTERNAL_ERROR)
        self.mark()

    # === timers, drain, close =====================================================================

    def _header_timer(self) -> None:
        waiting = self.codec.in_headers
        if waiting and self._timer is None:
            self._timer = self.loop.call_later(self.env.header_timeout, self._header_timeout)
        elif not waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.closed or not self.codec.in_headers:
            return
        l7_metrics.codec_errors(self.env.name, "header_timeout").inc()
        log_event(log, logging.WARNING, "request head not completed in time", listener=self.env.name,
                  timeout_s=self.env.header_timeout, client=self.client_ip, peer_id=self.peer_id)
        self.codec.close()
        self.closed = True
        self.transport.write(error_response(408))
        self.transport.close()

    def drain(self) -> None:
        if self.codec is None:
            self._close()
            return
        self.codec.start_drain()
        self.mark()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
