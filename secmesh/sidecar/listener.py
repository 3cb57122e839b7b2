"""One server per configured listener: bind (SO_REUSEPORT), accept, sniff, sweep idle, drain.

Outbound and DISABLE ports use the loop's own accept path (uvloop's C accept loop). mTLS
ports accept in Python and hand each socket to `connect_accepted_socket(ssl=newest context)`:
that completes the handshake *before* our protocol sees the connection, and a failed
handshake surfaces here as an exception with its reason (uvloop's `create_server(ssl=…)`
would swallow it), so it is logged and counted. A PERMISSIVE port first peeks (MSG_PEEK,
nothing consumed) at the first bytes: a TLS ClientHello goes to the mTLS pipeline, anything
else is passed to the app as plaintext with the original bytes intact. With policy files the
port's mode comes from PeerAuthentication and can change on a reload, so such ports always
accept here and read the current mode per accepted batch (DISABLE: plaintext passthrough).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from secmesh.log import log_event
from secmesh.sidecar import metrics
from secmesh.sidecar.config import ListenerConfig, MtlsMode
from secmesh.sidecar.connection import ConnContext, InboundConnection, OutboundConnection
from secmesh.sidecar.detect import SNIFF_BYTES, Wire, admit, classify
from secmesh.sidecar.tls import classify_handshake_error

log = logging.getLogger("secmesh.sidecar.listener")
BACKLOG = 1024


def bind_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A listening, non-blocking TCP socket; SO_REUSEPORT lets every worker bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _unsent(conn: Any) -> bool:
    """Bytes queued in our transport towards the connection's client."""
    t = conn.transport
    return t is not None and not t.is_closing() and t.get_write_buffer_size() > 0


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return ""


class Listener:
    def __init__(self, cfg: ListenerConfig, ctx: ConnContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.loop = ctx.loop
        self.sock: socket.socket | None = None
        self._sniffing: dict[int, tuple[socket.socket, float]] = {}
        self.handshaking = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.accepting = False
        self._inbound: Any = InboundConnection
        self._outbound: Any = OutboundConnection
        if ctx.l7 is not None and cfg.protocol == "auto":   # same stages, then sniff: HTTP session or splice
            from secmesh.sidecar.l7_conn import InboundAuto, OutboundAuto

            self._inbound, self._outbound = InboundAuto, OutboundAuto
        elif ctx.l7 is not None:                  # protocol http: same stages, then an HTTP session
            from secmesh.sidecar.l7_conn import InboundHttp, OutboundHttp

            self._inbound, self._outbound = InboundHttp, OutboundHttp
        elif cfg.protocol == "auto":              # the L7 runtime was not built for this port
            log_event(log, logging.ERROR, "protocol auto without the L7 runtime: serving as tcp",
                      listener=cfg.name)

    @property
    def mode(self) -> MtlsMode:
        """The port's PeerAuthentication mode now (policy-driven modes change on reload)."""
        fn = self.ctx.mode_fn
        return fn() if fn is not None else self.cfg.static_mode

    @property
    def bound_port(self) -> int:
        return self.sock.getsockname()[1] if self.sock is not None else 0

    async def start(self, sock: socket.socket | None = None) -> None:
        host, port = self.cfg.listen
        self.sock = sock or bind_socket(host, port)
        # Our own accept loop for every port, never the loop's C server: libuv (1.52 in uvloop 0.23)
        # accepts ONE connection per poll event, so a busy worker (tens of ms per loop turn) took a
        # burst of new connections at one per turn and kept clients seconds in the accept queue.
        self.loop.add_reader(self.sock.fileno(), self._on_accept)
        self.accepting = True
        self._schedule_sweep()
        log_event(log, logging.INFO, "listener started", listener=self.cfg.name, kind=self.cfg.kind,
                  address=f"{host}:{self.bound_port}", upstream=self.cfg.upstream, mtls_mode=self.mode.value)

    # -- accept; mTLS ports: (PERMISSIVE: peek,) handshake ---------------------------------------

    def _on_accept(self) -> None:
        assert self.sock is not None
        mode = self.mode
        for _ in range(64):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log_event(log, logging.WARNING, "accept failed", listener=self.cfg.name, error=repr(exc))
                return
            if len(self.ctx.conns) + len(self._sniffing) + self.handshaking >= self.cfg.max_connections:
                metrics.connections(self.cfg.name, "refused_limit").inc()
                conn.close()
                continue
            conn.setblocking(False)
            if self.cfg.kind == "outbound":           # plaintext from the local app
                self.loop.create_task(self._adopt_plain(conn, lambda: self._outbound(self.ctx)))
                continue
            if mode is MtlsMode.STRICT:
                self.handshaking += 1
                self.loop.create_task(self._adopt(conn, True))
                continue
            if mode is MtlsMode.DISABLE:   # plaintext passthrough: whatever the client speaks goes to the app
                self.loop.create_task(self._adopt(conn, False))
                continue
            fd = conn.fileno()
            self._sniffing[fd] = (conn, self.loop.time() + self.ctx.handshake_timeout)
            self.loop.add_reader(fd, self._on_first_bytes, conn)

    def _on_first_bytes(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        try:
            first = conn.recv(SNIFF_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        self.loop.remove_reader(fd)
        self._sniffing.pop(fd, None)
        if not first:   # closed before saying anything
            conn.close()
            return
        wire = classify(first)
        mode = self.mode
        ok, reason = admit(mode, wire)
        if not ok:
            metrics.connections(self.cfg.name, "refused_" + wire.value).inc()
            log_event(log, logging.WARNING, "connection refused", listener=self.cfg.name, reason=reason,
                      mtls_mode=mode.value, src=_peer(conn))
            conn.close()
            return
        tls = wire is Wire.TLS and mode is not MtlsMode.DISABLE
        if tls:
            self.handshaking += 1
        self.loop.create_task(self._adopt(conn, tls))

    async def _adopt_plain(self, conn: socket.socket, factory: Any) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, conn)
        except OSError as exc:                    # the peer went away before it got a transport
            log_event(log, logging.DEBUG, "accepted connection lost", listener=self.cfg.name, error=str(exc)[:200])

    async def _adopt(self, conn: socket.socket, tls: bool) -> None:
        """Give the socket a transport; for TLS, run the handshake on the newest context first."""
        ctx = self.ctx
        state = ctx.holder.state
        src = _peer(conn)
        inbound = self._inbound
        try:
            if not tls:
                await self.loop.connect_accepted_socket(lambda: inbound(ctx, tls=False), conn)
                return
            assert state is not None, "listeners start only once a certificate is held"
            server = ctx.server_ctx_fn() if ctx.server_ctx_fn is not None else state.server
            await self.loop.connect_accepted_socket(
                lambda: inbound(ctx, tls=True), conn, ssl=server, ssl_handshake_timeout=ctx.handshake_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = classify_handshake_error(exc) if tls else "error"
            result = "refused_plaintext" if reason == "not_tls" else "handshake_failed"
            metrics.handshake_failures(self.cfg.name, reason).inc()
            metrics.connections(self.cfg.name, result).inc()
            log_event(log, logging.WARNING, "connection refused", listener=self.cfg.name, result=result,
                      reason=reason, error=str(exc)[:200], src=src)
            # no conn.close(): uvloop owns the fd once it has a transport and detaches the socket
        finally:
            if tls:
                self.handshaking -= 1

    # -- idle and stalled connections ------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        send = self.cfg.send_timeout or self.cfg.idle_timeout
        interval = max(0.05, min(self.cfg.idle_timeout / 4, send / 4, self.ctx.handshake_timeout / 2, 5.0))
        self._sweeper = self.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        idle_timeout, send_timeout = self.cfg.idle_timeout, self.cfg.send_timeout
        for c in list(self.ctx.conns):
            up = c.upstream_pipe
            moved = c.nbytes + (up.nbytes if up is not None else 0)
            if moved != c.seen_bytes:
                c.seen_bytes = moved
                c.idle_since = now
            elif c.result != "forwarded":
                continue
            elif now - c.idle_since >= idle_timeout:
                c.result, c.reason = "idle_timeout", f"no bytes either way for {idle_timeout:g}s"
                c.close()
            elif send_timeout and now - c.idle_since >= send_timeout and _unsent(c):
                # nginx's send_timeout: a client that reads nothing of what is queued for it (a slow-read
                # attack, or a client gone silent) would hold its buffers until idle_timeout
                c.result, c.reason = "send_timeout", f"the client took none of the queued bytes for {send_timeout:g}s"
                c.abort()
                if up is not None:
                    up.abort()
        for fd, (conn, deadline) in list(self._sniffing.items()):
            if now >= deadline:   # connected but never spoke: a stalled or half-open client
                self.loop.remove_reader(fd)
                del self._sniffing[fd]
                metrics.handshake_failures(self.cfg.name, "timeout").inc()
                conn.close()
        self._schedule_sweep()

    # -- shutdown ------------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening socket (new connections go to other workers or are refused)."""
        if not self.accepting:
            return
        self.accepting = False
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _close_sniffing(self) -> None:
        for fd, (conn, _) in list(self._sniffing.items()):
            self.loop.remove_reader(fd)
            conn.close()
        self._sniffing.clear()

    async def drain(self, timeout: float) -> int:
        """Wait for open connections to finish; abort what is left after `timeout`. Returns aborted count."""
        deadline = self.loop.time() + timeout
        for c in list(self.ctx.conns):           # HTTP: GOAWAY / `Connection: close`; idle ones close now
            drain = getattr(c, "drain", None)
            if drain is not None:
                drain()
        # connections still being sniffed or in their TLS handshake are not in `conns` yet: an accepted
        # peer gets to finish its handshake (and its exchange) before this process goes away
        while (self.ctx.conns or self.handshaking or self._sniffing) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._close_sniffing()
        left = list(self.ctx.conns)
        for c in left:
            c.result, c.reason = "drained", "drain timeout"
            c.abort()
            if c.upstream_pipe is not None:
                c.upstream_pipe.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        return len(left)
