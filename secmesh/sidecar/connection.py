"""Per-connection pipelines: inbound (handshake → peer ID → L4 authz → app) and outbound.

Each downstream connection is one `Pipe`. The listener completes the TLS handshake before the
protocol sees the connection (`connect_accepted_socket(ssl=…)`, so a failed handshake is
reported with its reason there). `connection_made` then runs the synchronous stages — peer
SPIFFE ID, L4 authorization — and a DENY aborts the connection right there: uvloop schedules
the first read of decrypted data *after* `connection_made`, so not a byte of the peer's data
is read. An admitted connection pauses reading, connects its upstream in a small task, and
is linked to it. Decisions come from pure functions (`tls.peer_spiffe_id`, the authorizer);
this module only acts on them, counts and logs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from secmesh.errors import IdentityError
from secmesh.identity.spiffe import TrustDomain
from secmesh.log import log_event
from secmesh.sidecar import metrics
from secmesh.sidecar.authz_l4 import ConnectionAuthorizer, ConnectionInfo
from secmesh.sidecar.config import ListenerConfig, MtlsMode
from secmesh.sidecar.flow import Pipe, link
from secmesh.sidecar.tls import ContextHolder, check_resumed_peer, classify_handshake_error, peer_spiffe_id

try:
    from uvloop import Loop as _UVLOOP
except ImportError:  # pragma: no cover - uvloop is a dependency; stdlib asyncio works too
    _UVLOOP = None

log = logging.getLogger("secmesh.sidecar.connection")


@dataclass
class ConnContext:
    """Everything a connection of one listener needs; built once per listener."""

    cfg: ListenerConfig
    holder: ContextHolder
    authorizer: ConnectionAuthorizer
    trust_domain: TrustDomain | None
    handshake_timeout: float
    high_water: int
    low_water: int
    access_log: Any    # a ConnectionLog (batched JSON lines), or None/False when off
    loop: asyncio.AbstractEventLoop
    conns: set[Any] = field(default_factory=set)
    mode_fn: Callable[[], MtlsMode] | None = None   # PeerAuthentication from policy files; None = static mode
    l7: Any = None                                  # protocol http: the listener's `http_proxy.L7Env`
    server_ctx_fn: Callable[[], Any] | None = None  # protocol http: the ALPN (h2, http/1.1) server context

    def __post_init__(self) -> None:
        self.name = self.cfg.name
        self.upstream = self.cfg.upstream_addr
        self.upstream_text = f"{self.upstream[0]}:{self.upstream[1]}"
        self.peer_ids = frozenset(self.cfg.peer_ids)
        n = self.name
        self.m_accepted = metrics.connections(n, "accepted")
        self.m_active = metrics.active(n)
        self.m_up = metrics.bytes_counter(n, "upstream")
        self.m_down = metrics.bytes_counter(n, "downstream")
        self.m_resumed = metrics.tls_resumed(n)
        # uvloop sets TCP_NODELAY on every TCP transport it creates; stdlib asyncio does not
        self.set_nodelay = _UVLOOP is None or not isinstance(self.loop, _UVLOOP)


def nodelay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _Downstream(Pipe):
    """Common bookkeeping: registration, limits, the upstream task, the access-log line."""

    def __init__(self, ctx: ConnContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.result = "setup"
        self.reason = ""
        self.peer_id: str | None = None
        self.policy: str | None = None
        self.residual: object | None = None
        self.engine: object | None = None
        self.authz_code = ""       # reason code of the connection-time ALLOW (`needs_request`: L7 decides)
        self.tls_version: str | None = None
        self.tls_resumed = False
        self.cipher: str | None = None
        self.upstream_pipe: Pipe | None = None
        self._setup_done = False
        self._finished = False
        self.started = 0.0
        self.idle_since = 0.0
        self.seen_bytes = 0        # bytes moved either way at the last idle sweep
        self.src: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ctx = self.ctx
        self.started = self.idle_since = ctx.loop.time()
        self.src = transport.get_extra_info("peername") or ("", 0)
        if len(ctx.conns) >= ctx.cfg.max_connections:
            metrics.connections(ctx.name, "refused_limit").inc()
            self._setup_done = self._finished = True
            self.closed = True
            transport.abort()
            return
        ctx.conns.add(self)
        ctx.m_accepted.inc()
        ctx.m_active.inc()
        if ctx.set_nodelay:
            nodelay(transport)
        if not self.begin():
            self._setup_done = True
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        ctx.loop.create_task(self._run_setup())

    def begin(self) -> bool:
        """Synchronous stages run in connection_made, before any read; False = refused."""
        return True

    async def _run_setup(self) -> None:
        try:
            await self.setup()
        except Exception as exc:  # a bug in a stage must not kill the listener
            self.fail("error", f"internal error: {exc!r}", level=logging.ERROR)
        finally:
            self._setup_done = True
            if self.closed:
                self._finish()

    async def setup(self) -> None:
        raise NotImplementedError

    def fail(self, result: str, reason: str, *, level: int = logging.WARNING, abort: bool = True,
             code: str | None = None, ref: Any = None) -> None:
        self.result, self.reason = result, reason
        extra: dict[str, Any] = {}
        if code:
            extra["code"] = code
        if self.policy:
            extra["policy"] = self.policy
        if ref is not None:   # a policy decided: name it the way a human finds it in the YAML
            extra.update(policy_kind=ref.kind, policy_namespace=ref.namespace, policy_name=ref.name,
                         policy_rule=ref.rule, policy_action=ref.action, policy_source=str(ref.pos))
        log_event(log, level, "connection refused", listener=self.ctx.name, result=result, reason=reason,
                  src=f"{self.src[0]}:{self.src[1]}", peer_id=self.peer_id, **extra)
        if abort:
            self.abort()
        if self.upstream_pipe is not None:
            self.upstream_pipe.abort()

    async def connect_upstream(self, **kw: Any) -> Pipe | None:
        """Open the upstream connection; on failure refuse the downstream with the reason."""
        host, port = self.ctx.upstream
        timeout = self.ctx.cfg.connect_timeout + (self.ctx.handshake_timeout if "ssl" in kw else 0.0)
        try:
            async with asyncio.timeout(timeout):   # no extra task per connection, unlike wait_for
                _, up = await self.ctx.loop.create_connection(Pipe, host, port, **kw)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            reason = classify_handshake_error(exc)
            metrics.handshake_failures(self.ctx.name, "upstream_" + reason).inc()
            self.fail("upstream_failed", f"upstream TLS handshake failed: {reason}: {exc}")
            return None
        except (OSError, asyncio.TimeoutError) as exc:
            self.fail("upstream_failed", f"upstream {host}:{port} unreachable: {exc!r}")
            return None
        if self.closed:   # the client went away meanwhile
            self.result = "client_gone"
            up.abort()
            return None
        if self.ctx.set_nodelay:
            nodelay(up.transport)
        self.upstream_pipe = up
        return up

    def splice(self, up: Pipe) -> None:
        self.result = "forwarded"
        link(self, up, high_water=self.ctx.high_water, low_water=self.ctx.low_water)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._setup_done:
            self._finish()

    def wire_protocol(self) -> str:
        """What the connection carried, for its log line: `tcp` here; the HTTP kinds say which."""
        return "tcp"

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        ctx = self.ctx
        ctx.conns.discard(self)
        ctx.m_active.dec()
        up_bytes = self.nbytes
        down_bytes = self.upstream_pipe.nbytes if self.upstream_pipe is not None else 0
        if up_bytes:
            ctx.m_up.inc(up_bytes)
        if down_bytes:
            ctx.m_down.inc(down_bytes)
        metrics.connections(ctx.name, self.result if self.result != "forwarded" else "closed").inc()
        if ctx.access_log:
            ctx.access_log.emit({
                "listener": ctx.name, "src": f"{self.src[0]}:{self.src[1]}", "peer_id": self.peer_id,
                "upstream": ctx.upstream_text, "bytes_up": up_bytes,
                "bytes_down": down_bytes, "duration_ms": round((ctx.loop.time() - self.started) * 1000, 1),
                "tls_version": self.tls_version, "cipher": self.cipher, "tls_resumed": self.tls_resumed,
                "protocol": self.wire_protocol(), "result": self.result,
                "reason": self.reason, "policy": self.policy})


def _tls_info(conn: _Downstream, transport: Any) -> None:
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is not None:
        conn.tls_version = sslobj.version()
        cipher = sslobj.cipher()
        conn.cipher = cipher[0] if cipher else None


class InboundConnection(_Downstream):
    """mTLS from a peer (or plaintext where PeerAuthentication admits it) → plaintext to the app.

    For TLS the handshake has already completed when `connection_made` runs (the listener
    passed the newest server context to `connect_accepted_socket`).
    """

    def __init__(self, ctx: ConnContext, *, tls: bool = True) -> None:
        super().__init__(ctx)
        self.is_tls = tls

    def begin(self) -> bool:
        if self.is_tls:
            _tls_info(self, self.transport)
        return self._authorize()

    async def setup(self) -> None:
        up = await self.connect_upstream()
        if up is not None:
            self.splice(up)

    def _authorize(self) -> bool:
        """Peer ID (TLS only) → L4 decision. Plaintext has no principal: only `allow_all` admits it."""
        ctx = self.ctx
        t = self.transport
        sid = None
        sslobj = t.get_extra_info("ssl_object")  # type: ignore[union-attr]
        if self.is_tls:
            try:
                sid = _verified_peer(self, t, sslobj)
            except IdentityError as exc:
                metrics.handshake_failures(ctx.name, exc.reason).inc()
                self.fail("denied", exc.message)
                return False
            self.peer_id = str(sid)
        sockname = t.get_extra_info("sockname") or ("", 0)  # type: ignore[union-attr]
        info = ConnectionInfo(sid, self.src[0], self.src[1], sockname[0], sockname[1],
                              getattr(sslobj, "server_hostname", None), ctx.name, self.is_tls)
        decision = ctx.authorizer.decide(info)
        self.policy = decision.policy
        metrics.authz(ctx.name, "allow" if decision.allowed else "deny", decision.code, decision.policy or "").inc()
        if not decision.allowed:
            self.fail("denied", decision.reason, code=decision.code, ref=decision.ref)
            return False
        self.residual = decision.residual
        self.authz_code = decision.code
        self.engine = decision.engine     # the policy engine that must finish `residual` (L7)
        return True


class OutboundConnection(_Downstream):
    """Plaintext from the local app → mTLS to the upstream, whose SPIFFE ID must be expected."""

    async def setup(self) -> None:
        ctx = self.ctx
        state = ctx.holder.state
        if state is None:
            self.fail("upstream_failed", "no certificate held yet")
            return
        client = ctx.holder.client_for(ctx.name)
        up = await self.connect_upstream(ssl=client, server_hostname=ctx.cfg.sni or None,
                                         ssl_handshake_timeout=ctx.handshake_timeout)
        if up is None:
            return
        up.is_tls = True
        t = up.transport
        sslobj = t.get_extra_info("ssl_object")  # type: ignore[union-attr]
        try:
            sid = _verified_peer(self, t, sslobj)
        except IdentityError as exc:
            metrics.handshake_failures(ctx.name, "upstream_" + exc.reason).inc()
            self.fail("upstream_failed", f"upstream identity: {exc.message}")
            return
        self.peer_id = str(sid)
        if self.peer_id not in ctx.peer_ids:
            metrics.handshake_failures(ctx.name, "upstream_unexpected_id").inc()
            self.fail("upstream_failed", f"upstream presented {sid}, expected one of {sorted(ctx.peer_ids)}")
            return
        _tls_info(self, t)
        slot = getattr(client, "secmesh_sessions", None)
        if slot is not None and not sslobj.session_reused and not slot.waiting:
            slot.waiting = True    # the ticket follows the handshake: pick it up shortly
            ctx.loop.call_later(0.02, _capture_session, ctx.loop, slot, sslobj, 0.02)
        t.pause_reading()  # type: ignore[union-attr]
        self.splice(up)


def _verified_peer(conn: Any, transport: Any, sslobj: Any) -> Any:
    """The peer's SPIFFE ID on a finished TLS handshake, either direction; raises IdentityError.

    A resumed session is counted and its peer certificate re-checked for expiry (a ticket can
    outlive the certificate it was issued with).
    """
    ctx = conn.ctx
    peercert = transport.get_extra_info("peercert")
    if sslobj is not None and sslobj.session_reused:
        ctx.m_resumed.inc()
        conn.tls_resumed = True
        check_resumed_peer(peercert, time.time())
    return peer_spiffe_id(peercert, ctx.trust_domain)


def _capture_session(loop: asyncio.AbstractEventLoop, slot: Any, sslobj: Any, delay: float) -> None:
    """Keep this connection's session once its ticket has arrived (retrying a few times)."""
    if slot.offer(sslobj) or delay > 1.0:
        slot.waiting = False
        return
    loop.call_later(delay * 2, _capture_session, loop, slot, sslobj, delay * 2)
