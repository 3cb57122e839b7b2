"""Composition root of `secmesh agent`: build the parts from the config, serve, stop on a signal.

Start-up order matters for the error a user sees: config and JWKS and CA root bundle first (a
bad one exits non-zero with the file named), then the socket claim (refuse if a live server
answers), then serving, then warming the agent's own workload identity in the background (as
istio-agent pre-generates `default` and `ROOTCA`) so the first SDS request is answered from
the cache. Shutdown stops the gRPC server with a grace period before the loop closes (P6).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from secmesh.agent.admin import AdminServer
from secmesh.agent.attest import Attested, Attestor
from secmesh.agent.ca_client import Backoff, CaClient
from secmesh.agent.cache import SecretCache
from secmesh.agent.config import AgentConfig
from secmesh.agent.jwt_authority import JwtAuthority
from secmesh.agent.metrics import track_cache
from secmesh.agent.rotator import IdentityManager
from secmesh.agent.sds import SdsService, register as register_sds
from secmesh.agent.server import SocketClaim, start_server
from secmesh.agent.workload_api import WorkloadApi
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import ConfigError, IdentityError, SecmeshError
from secmesh.identity.bundle import load_pem_certificates
from secmesh.identity.tokens import TokenError, TokenValidator, jwks_source
from secmesh.log import log_event

_log = logging.getLogger("secmesh.agent")
ROOTS_POLL_SECONDS = 30.0


def _read_roots(path: Path) -> list:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CA root bundle: {exc.strerror}", location=str(path), field="ca.root") from None
    try:
        certs = load_pem_certificates(data, what=str(path))
    except IdentityError as exc:
        raise ConfigError(exc.message, location=str(path), field="ca.root") from None
    if not certs:
        raise ConfigError("CA root bundle holds no certificate", location=str(path), field="ca.root")
    return certs


class Agent:
    def __init__(self, config: AgentConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self._tasks: list[asyncio.Task] = []
        self.server = None
        self.admin: AdminServer | None = None
        self.own_identity: str | None = None
        self.warmed = asyncio.Event()

    def _build(self) -> None:
        cfg = self.config
        try:
            keys = jwks_source(cfg.token.jwks)
        except IdentityError as exc:
            raise ConfigError(exc.message, location=cfg.token.jwks, field="token.jwks") from None
        validator = TokenValidator(keys, trust_domain=cfg.identity.trust_domain, audiences=tuple(cfg.token.audiences),
                                   issuers=tuple(cfg.token.issuers) or None, clock=self.clock,
                                   leeway_seconds=int(cfg.token.leeway))
        self.attestor = Attestor(validator, cfg.token.file or None)
        self.cache = SecretCache(self.clock)
        track_cache(self.cache)
        self.cache.set_file_roots(_read_roots(cfg.ca.root))
        self.ca = CaClient(cfg.ca.address, cfg.ca.root, server_name=cfg.ca.server_name, timeout=cfg.ca.timeout,
                           max_reconnect_backoff=min(cfg.ca.backoff_max, 5.0))
        self.manager = IdentityManager(
            self.cache, self.ca, ttl_seconds=cfg.identity.ttl, fraction=cfg.identity.rotation_fraction,
            jitter=cfg.identity.rotation_jitter, clock=self.clock,
            backoff=Backoff(initial=cfg.ca.backoff_initial, maximum=cfg.ca.backoff_max),
            file_identity=self._file_identity if cfg.token.file else None)
        self.jwt = JwtAuthority(cfg.identity.trust_domain)
        self.sds = SdsService(self.attestor, self.manager, self.cache, unknown_resource=cfg.sds.unknown_resource,
                              clock=self.clock)
        self.workload_api = WorkloadApi(self.attestor, self.manager, self.cache, self.jwt,
                                        jwt_ttl_seconds=cfg.identity.jwt_svid_ttl, clock=self.clock)

    def _file_identity(self) -> Attested | None:
        if self.attestor.read_token_file() is None:
            return None
        return self.attestor.attest(None, what="token-file")

    async def start(self) -> None:
        cfg = self.config
        self._build()
        self.claim = SocketClaim(cfg.socket.path, cfg.socket.mode_bits)
        self.claim.acquire()
        try:
            handlers = [self.workload_api.handler()] if cfg.workload_api.enabled else []
            services = [(register_sds, self.sds)] if cfg.sds.enabled else []
            self.server = await start_server(self.claim, handlers, services)
            if cfg.admin.address:
                host, _, port = cfg.admin.address.rpartition(":")
                self.admin = AdminServer(host, int(port), ready=self.ready, identities=self.identities)
                await self.admin.start()
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._warm()))
        self._tasks.append(loop.create_task(self._watch_roots()))
        log_event(_log, logging.INFO, "agent serving", socket=str(cfg.socket.path), mode=cfg.socket.mode,
                  sds=cfg.sds.enabled, workload_api=cfg.workload_api.enabled, ca=cfg.ca.address,
                  trust_domain=cfg.identity.trust_domain,
                  admin=f"{self.admin.host}:{self.admin.bound_port}" if self.admin else None)

    async def _warm(self) -> None:
        """Pre-issue the agent's own workload identity (token file), retrying with backoff."""
        if not self.config.token.file or self.attestor.read_token_file() is None:
            self.warmed.set()
            return
        attempt = 0
        backoff = self.manager.backoff
        while True:
            try:
                attested = self._file_identity()
                if attested is None:
                    raise TokenError("token file disappeared", reason="missing")
                self.manager.pinned.add(attested.identity.spiffe_id)
                self.own_identity = str(attested.identity.spiffe_id)
                await self.manager.get(attested)
                self.warmed.set()
                return
            except SecmeshError as exc:
                delay = backoff.delay(attempt)
                attempt += 1
                log_event(_log, logging.WARNING, "warming the workload certificate failed; retrying",
                          reason=exc.reason, error=exc.message, retry_in=round(delay, 2), attempt=attempt)
                await asyncio.sleep(delay)

    async def _watch_roots(self) -> None:
        """Re-read the CA root bundle file; a change is pushed to every stream as `ROOTCA`."""
        while True:
            await asyncio.sleep(ROOTS_POLL_SECONDS)
            try:
                if self.cache.set_file_roots(_read_roots(self.config.ca.root)):
                    log_event(_log, logging.INFO, "CA root bundle changed", path=str(self.config.ca.root))
            except ConfigError as exc:
                log_event(_log, logging.WARNING, "CA root bundle unreadable; keeping the last good", error=exc.message)

    def ready(self) -> tuple[bool, str]:
        if self.server is None:
            return False, "not serving yet"
        if not self.warmed.is_set():
            return False, "workload certificate not issued yet"
        return True, "ready"

    def identities(self) -> list[dict]:
        now = self.clock.now()
        out = []
        for sid in self.cache.identities():
            m = self.cache.get(sid)
            if m is None:
                continue
            out.append({"spiffe_id": str(sid), "serial": m.serial_hex, "not_after": m.not_after.isoformat(),
                        "seconds_left": round(m.seconds_left(now), 1), "version": m.version,
                        "watchers": self.cache.subscriber_count(sid), "own": str(sid) == self.own_identity})
        return out

    async def stop(self, grace: float = 2.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(grace)
        if hasattr(self, "manager"):
            await self.manager.close()
        if hasattr(self, "ca"):
            await self.ca.close()
        if self.admin is not None:
            await self.admin.stop()
        if hasattr(self, "claim"):
            self.claim.release()


async def serve(config: AgentConfig) -> int:
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP must not kill the agent: it re-reads its token file and CA roots by itself
    loop.add_signal_handler(signal.SIGHUP, log_event, _log, logging.INFO,
                            "SIGHUP ignored: the agent re-reads its token file and CA roots by itself")
    await agent.start()
    await stop.wait()
    log_event(_log, logging.INFO, "agent stopping")
    await agent.stop()
    return 0


def run(config: AgentConfig) -> int:
    import uvloop

    try:
        return uvloop.run(serve(config))
    except SecmeshError as exc:
        log_event(_log, logging.ERROR, "agent cannot start", reason=exc.reason, error=exc.message)
        raise
