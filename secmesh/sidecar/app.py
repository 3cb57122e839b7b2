"""Composition root of one sidecar worker: cert source → CertStore → listeners, admin, signals, drain.

Order matters: the certificate source starts first and listeners are bound only once a
certificate is held (Envoy's "warming" listeners), so a peer never reaches a port that
cannot complete a handshake. SIGTERM stops accepting, lets connections finish for up to
`drain_timeout`, then aborts the rest. SIGHUP reloads file-based certificates and the policy
files at once. With `hot_restart_socket`, listening sockets may come from the previous process
(`hot_restart.take_over`, done by the CLI before the loop starts); once this process serves, it
tells that one to drain and listens on the socket for its own successor.

Authorization per inbound listener: with `policies` configured, the Istio policy engine
(`PolicyAuthorizer`) decides and PeerAuthentication in the same files sets each port's mTLS
mode; without it, the listener's ghostunnel-style `allow_principals` list and static
`mtls_mode` apply. The config refuses a listener that mixes the two.

`protocol: http` listeners share one `l7_setup.L7Runtime` per worker (clusters and their pools,
per-request authz, the request access log): their connections run the same L4 stages and then
hand the transport to an `http_proxy.HttpSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any, Callable

from secmesh.identity.spiffe import TrustDomain
from secmesh.log import log_event
from secmesh.sidecar.admin import AdminState, start_admin
from secmesh.sidecar.authz_l4 import AllowAny, AllowList, ConnectionAuthorizer
from secmesh.sidecar.certstore import CertStore
from secmesh.sidecar.config import ListenerConfig, MtlsMode, SidecarConfig, split_host_port
from secmesh.sidecar.connection import ConnContext
from secmesh.sidecar.listener import Listener, bind_socket
from secmesh.sidecar.preflight import describe_bind_error
from secmesh.sidecar.tls import ContextHolder

if TYPE_CHECKING:
    from secmesh.sidecar.hot_restart import Inherited
    from secmesh.sidecar.worker_state import RuntimeDir
    from secmesh.sidecar.policy_source import PolicySnapshot, PolicySource

log = logging.getLogger("secmesh.sidecar")


def authorizer_for(cfg: ListenerConfig, policies: PolicySource | None = None) -> ConnectionAuthorizer:
    """The L4 authorizer of a listener: the policy engine when policy files are configured."""
    if cfg.kind == "outbound":
        return AllowAny()
    if policies is not None:
        from secmesh.sidecar.authz_policy import PolicyAuthorizer

        return PolicyAuthorizer(policies, listener=cfg.name, protocol=cfg.protocol, port=cfg.policy_port,
                                l7_available=cfg.is_l7)
    return AllowList(cfg.allow_principals, allow_all=cfg.allow_all, name=f"{cfg.name}/allow_principals")


def mode_fn_for(cfg: ListenerConfig, policies: PolicySource | None) -> Callable[[], MtlsMode] | None:
    """PeerAuthentication from the policy files for this port, read from the current snapshot."""
    if policies is None or cfg.kind != "inbound":
        return None
    port = cfg.policy_port
    return lambda: policies.current.mode(port)[0]


class Sidecar:
    def __init__(self, config: SidecarConfig, *, worker: int = 0, policies: PolicySnapshot | None = None,
                 inherited: Inherited | None = None, sockets: dict[str, socket.socket] | None = None,
                 runtime: RuntimeDir | None = None) -> None:
        self.config = config
        self.inherited = inherited
        self.sockets = sockets or {}      # bound by the supervisor of `--workers N` (by listener name, + admin)
        self.runtime = runtime            # the supervisor's shared directory (N > 1): readiness, metrics
        self.admin_sock: socket.socket | None = None
        self.worker = worker
        self.policies: PolicySource | None = None
        if policies is not None:
            from secmesh.sidecar.policy_source import PolicySource

            self.policies = PolicySource(config, policies)
        self.holder = ContextHolder(min_version=config.tls.min_version, ciphers_tls12=config.tls.ciphers_tls12,
                                    session_resumption=config.tls.session_resumption)
        self.store = CertStore(self.holder)
        self.listeners: list[Listener] = []
        self.l7: Any = None
        self.admin_state: AdminState | None = None
        self.file_source: Any = None
        self._stop = asyncio.Event()
        self.exit_code = 0
        self.hot_restart: Any = None
        self._tasks: list[asyncio.Task[Any]] = []

    def is_ready(self) -> bool:
        # an expired certificate (agent unreachable past the leaf's lifetime) makes every handshake fail:
        # report it, so the orchestrator stops routing here instead of seeing a healthy pod
        return self.store.material is not None and not self.store.expired() and bool(self.listeners) and all(
            lst.accepting for lst in self.listeners)

    def request_stop(self) -> None:
        self._stop.set()

    def _start_source(self) -> None:
        certs = self.config.certs
        if certs.source == "file":
            from secmesh.sidecar.file_source import FileSource

            self.file_source = FileSource(certs.file, self.store)
            self._tasks.append(asyncio.create_task(self.file_source.run(), name="file-source"))
        else:
            from secmesh.sidecar.sds_client import SdsClient

            self._tasks.append(asyncio.create_task(SdsClient(certs.sds, self.store).run(), name="sds-client"))

    def _reload(self) -> None:
        if self.file_source is not None:
            log_event(log, logging.INFO, "SIGHUP: reloading certificate files")
            self.file_source.load()
        if self.policies is not None:
            self.policies.request_reload()

    def _start_l7(self, loop: asyncio.AbstractEventLoop, td: TrustDomain | None) -> Any:
        """The L7 runtime (clusters, pools, per-request authz) when a listener speaks `http`."""
        cfg = self.config
        http = [(lcfg, lcfg.http) for lcfg in cfg.listeners if lcfg.is_l7]
        if not http:
            return None
        from secmesh.sidecar.l7_setup import AuthnSource, L7Runtime
        from secmesh.sidecar.policy_source import workload_of

        authn = AuthnSource(self.policies, workload_of(cfg), cfg.root_namespace)
        if self.policies is not None:
            self.policies.subscribe(authn.on_reload)
        self.l7 = L7Runtime(clusters=cfg.clusters, listeners=http, holder=self.holder, trust_domain=td, loop=loop,
                            min_version=cfg.tls.min_version, ciphers_tls12=cfg.tls.ciphers_tls12,
                            authenticator=authn, access_log=cfg.access_log)
        if self.policies is not None:          # remote JWKS, fetched off the loop (a reload may add some)
            self._tasks.append(self.l7.jwks_task())
        if self.admin_state is not None:
            self.admin_state.clusters = self.l7.manager.describe
        return self.l7

    def _log_modes(self, snap: PolicySnapshot) -> None:
        """Say which PeerAuthentication sets each inbound port's mode (at start and after each reload)."""
        from secmesh.sidecar.authz_policy import policy_label

        for lcfg in self.config.listeners:
            if lcfg.kind == "inbound":
                mode, ref = snap.mode(lcfg.policy_port)
                log_event(log, logging.INFO, "peer authentication", listener=lcfg.name, workload_port=lcfg.policy_port,
                          mtls_mode=mode.value, policy=policy_label(ref) or "default (no PeerAuthentication)",
                          policy_version=snap.version)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        admin = None
        access: Any = None
        cfg = self.config
        inherited = self.inherited.sockets if self.inherited is not None else self.sockets
        if self.runtime is not None:
            self.runtime.publish(self.worker, False)       # alive, not ready yet
            self._tasks.append(asyncio.create_task(self._publish_loop(), name="worker-state"))
        if self.worker == 0 and cfg.admin.enabled and cfg.admin.address:
            host, port = split_host_port(cfg.admin.address, what="admin.address")
            self.admin_state = AdminState(cfg, self.store, self.is_ready, self.policies, runtime=self.runtime)
            try:
                self.admin_sock = inherited.get("admin") or bind_socket(host, port, reuse_port=False)
            except OSError as exc:
                return self._bind_failed("admin", cfg.admin.address, exc)
            admin = await start_admin(self.admin_state, host, port, sock=self.admin_sock)
            log_event(log, logging.INFO, "admin listening", address=cfg.admin.address)
        self._start_source()
        if self.policies is not None:
            self._log_modes(self.policies.current)
            self.policies.subscribe(self._log_modes)
            self._tasks.append(asyncio.create_task(self.policies.run(), name="policy-source"))
        waiter = asyncio.ensure_future(self.store.ready.wait())
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not self._stop.is_set():
            td = TrustDomain.parse(cfg.trust_domain) if cfg.trust_domain else None
            if cfg.access_log:
                from secmesh.sidecar.connlog import ConnectionLog

                access = ConnectionLog(loop)
            l7 = self._start_l7(loop, td)
            for lcfg in cfg.listeners:
                ctx = ConnContext(cfg=lcfg, holder=self.holder, authorizer=authorizer_for(lcfg, self.policies),
                                  trust_domain=td, handshake_timeout=cfg.tls.handshake_timeout,
                                  high_water=cfg.buffer_high_water, low_water=cfg.buffer_low_water,
                                  access_log=access, loop=loop, mode_fn=mode_fn_for(lcfg, self.policies))
                if l7 is not None and lcfg.is_l7:
                    ctx.l7 = l7.env_for(lcfg, lcfg.http)
                    ctx.server_ctx_fn = lambda: l7.contexts.server
                listener = Listener(lcfg, ctx)
                try:
                    await listener.start(inherited.get(lcfg.name))
                except OSError as exc:
                    self._bind_failed(f"listener {lcfg.name}", lcfg.address, exc)
                    self.request_stop()
                    self.exit_code = 1
                    break
                self.listeners.append(listener)
            if not self._stop.is_set():
                log_event(log, logging.INFO, "sidecar ready", worker=self.worker, listeners=len(self.listeners))
                self._publish()
                if self.runtime is None:             # N > 1: the supervisor does the hand-over
                    await self._hot_restart_ready(loop)
            await stopper
        waiter.cancel()
        log_event(log, logging.INFO, "draining", worker=self.worker, drain_timeout_s=cfg.drain_timeout)
        if admin is not None and self._handed_over():
            # The successor holds the same admin socket and is ready: leave every probe and scrape
            # to it, or a kubelet would see our draining 503 on /ready half of the time.
            admin.close()
            admin = None
        for lst in self.listeners:
            lst.stop_accepting()
        self._publish()
        aborted = sum(await asyncio.gather(*(lst.drain(cfg.drain_timeout) for lst in self.listeners)))
        if access is not None:
            access.flush()
        if self.l7 is not None:
            self.l7.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if admin is not None:
            admin.close()
        if self.hot_restart is not None:
            self.hot_restart.close()
        log_event(log, logging.INFO, "stopped", worker=self.worker, aborted_connections=aborted)
        return self.exit_code

    def _handed_over(self) -> bool:
        """This drain is a hot restart's: a successor took the sockets over and serves."""
        if self.runtime is not None:
            return self.runtime.handed_over()
        return self.hot_restart is not None and self.hot_restart.replaced

    def _publish(self) -> None:
        """N > 1: tell the runtime directory whether this worker is ready, its certificate's expiry, and
        its L7 clusters' state.

        The expiry gauges are callbacks (`set_function`) in memory, which another process cannot
        call: with multiprocess metrics their value is written here instead, once a second.
        """
        if self.runtime is None:
            return
        from secmesh.sidecar import metrics

        if self.store.material is not None:
            metrics.CERT_EXPIRY.labels("leaf").set(self.store._leaf_ttl())
            metrics.CERT_EXPIRY.labels("root").set(self.store._root_ttl())
        ready = self.is_ready()
        metrics.READY.set(1 if ready else 0)
        self.runtime.publish(self.worker, ready)
        if self.l7 is not None:        # worker 0's /clusters shows every worker's pools and ejections
            self.runtime.publish_view(self.worker, "clusters", self.l7.manager.describe())

    async def _publish_loop(self) -> None:
        while True:
            self._publish()
            await asyncio.sleep(1.0)

    def _bind_failed(self, what: str, address: str, exc: OSError) -> int:
        """A port taken between the CLI's pre-flight check and here: one error line, exit 1."""
        log_event(log, logging.ERROR, describe_bind_error(what, address, exc), worker=self.worker)
        return 1

    def _sockets(self) -> dict[str, socket.socket]:
        """What a successor inherits: the admin socket and every accepting listener's socket."""
        out = {lst.cfg.name: lst.sock for lst in self.listeners if lst.accepting and lst.sock is not None}
        if self.admin_sock is not None:
            out["admin"] = self.admin_sock
        return out

    async def _hot_restart_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serving now: let the previous process drain, then wait for our own successor."""
        if self.inherited is not None:
            await loop.run_in_executor(None, self.inherited.finish)
            self.inherited = None
        path = self.config.hot_restart_socket
        if path:
            from secmesh.sidecar.hot_restart import HotRestartServer

            self.hot_restart = HotRestartServer(path, self._sockets,
                                                lambda: loop.call_soon_threadsafe(self.request_stop))
            self.hot_restart.start()


def _tune_gc() -> None:
    """Keep the collector off the data path's tail.

    Start-up objects (modules, config, protos) are frozen out of every later collection, and
    the young-generation threshold is raised: the steady state allocates few container objects
    per connection (the protocol pair, a task), so collections become rare and short instead
    of landing, every few hundred requests, in the middle of someone's p99.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def run_worker(config: SidecarConfig, worker: int = 0, policies: PolicySnapshot | None = None,
               inherited: Inherited | None = None, *, sockets: dict[str, socket.socket] | None = None,
               runtime: RuntimeDir | None = None) -> int:
    """Run one worker's event loop (uvloop) to completion; returns the exit code.

    `policies` is the set compiled before forking (so a bad set stops start-up once, and
    workers share the compiled engine copy-on-write). With `--workers N`, `sockets` are this
    worker's share of the supervisor's sockets and `runtime` the shared directory.
    """
    import uvloop

    _tune_gc()
    return uvloop.run(Sidecar(config, worker=worker, policies=policies, inherited=inherited, sockets=sockets,
                              runtime=runtime).run())
