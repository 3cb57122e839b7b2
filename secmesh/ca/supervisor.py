"""`ca serve --workers N`: N serving processes on one port (SO_REUSEPORT), one parent that minds them.

Why processes: `cryptography` holds the GIL while it verifies and signs, and grpc.aio spends
~200 µs of Python per call, so one process tops out at one core. The kernel spreads incoming
connections over the workers' listening sockets (SO_REUSEPORT); each worker is a complete CA
server (`server.serve`): its own serving certificate and renewal, its own CA-directory watch,
its own connection to the shared SQLite ledger (WAL, `BEGIN IMMEDIATE`, busy timeout).

The parent checks everything a worker would refuse (CA directory, JWKS, port) before starting
any, so a bad setting is one error line and exit 1, as with one process. It then serves
`/ready` (every worker up) and `/metrics` (the workers' metrics merged) on the admin port,
restarts a worker that dies (backoff 1 s → 30 s), and on SIGTERM/SIGINT passes SIGTERM to every
worker and waits for their graceful stop.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import signal
import socket
import sys
import time

from secmesh.ca import metrics
from secmesh.ca.config import ServeConfig, parse_hostport
from secmesh.ca.ledger import SqliteLedger
from secmesh.ca.metricsmerge import merge
from secmesh.ca.reload import load_issuing
from secmesh.ca.signer import TtlPolicy
from secmesh.ca.workerlink import ParentSide
from secmesh.clock import SYSTEM_CLOCK
from secmesh.errors import CAError
from secmesh.identity.tokens import jwks_source
from secmesh.log import log_event

_log = logging.getLogger("secmesh.ca.supervisor")
START_TIMEOUT = 60.0
BACKOFF_INITIAL, BACKOFF_MAX, STABLE_AFTER = 1.0, 30.0, 60.0


def check_port_free(listen: str) -> None:
    """Refuse a port something already listens on: with SO_REUSEPORT the workers would share it silently."""
    host, port = parse_hostport(listen, what="listen")
    if port == 0:
        raise CAError("`--workers` above 1 needs a fixed port in `listen` (they must all bind the same one)",
                      reason="bad_listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise CAError(f"cannot listen on {listen}: {exc.strerror}", reason="bad_listen") from None
    finally:
        probe.close()


def preflight(config: ServeConfig) -> None:
    """What every worker would check, checked once here (errors exit 1 before any worker starts)."""
    ttl = TtlPolicy(_dt.timedelta(seconds=config.default_ttl), _dt.timedelta(seconds=config.max_ttl))
    issuing = load_issuing(config.dir, ttl, SYSTEM_CLOCK.now())
    jwks_source(config.jwks, token_file=config.jwks_token_file or None, ca_file=config.jwks_ca or None)
    SqliteLedger(issuing.material.ledger_path).close()  # schema + WAL mode before N processes open it
    check_port_free(config.listen)


class Worker:
    """One worker process and its channel; `start` returns once it reported ready (or raises)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.link: ParentSide | None = None
        self.ready = False
        self.started_at = 0.0

    async def start(self, config: ServeConfig) -> None:
        self.ready = False
        parent_end, child_end = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "secmesh.ca.worker", str(child_end.fileno()), str(self.index),
                pass_fds=(child_end.fileno(),))
        finally:
            child_end.close()
        self.started_at = time.monotonic()
        self.link = await ParentSide.open(parent_end)
        await self.link.send_config(config)
        ready = asyncio.ensure_future(self.link.wait_ready())
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({ready, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is None:
            exited.cancel()
            self.ready = True
            return
        ready.cancel()
        exited.cancel()
        try:  # a worker that failed closes its channel as it exits: collect its exit code
            code = await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise CAError(f"worker {self.index} did not become ready within {START_TIMEOUT:.0f}s",
                          reason="worker") from None
        raise CAError(f"worker {self.index} exited with code {code} during start-up (its log is above)",
                      reason="worker")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)


class Supervisor:
    def __init__(self, config: ServeConfig, count: int) -> None:
        self.config = config
        self.workers = [Worker(i) for i in range(count)]
        self.stopping = asyncio.Event()

    def ready(self) -> bool:
        return not self.stopping.is_set() and all(w.ready and w.alive() for w in self.workers)

    def _count_ready(self) -> None:
        metrics.WORKERS.set(sum(1 for w in self.workers if w.ready and w.alive()))

    async def gather_metrics(self) -> bytes:
        from secmesh.metrics import exposition

        async def one(worker: Worker) -> bytes | None:
            if not (worker.ready and worker.alive() and worker.link is not None):
                return None
            try:
                return await worker.link.metrics()
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                return None

        texts = [t for t in await asyncio.gather(*(one(w) for w in self.workers)) if t is not None]
        return merge(texts, exposition(), metrics.PARENT_FAMILIES)

    async def start_all(self) -> None:
        results = await asyncio.gather(*(w.start(self.config) for w in self.workers), return_exceptions=True)
        self._count_ready()
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop_all()
            raise failed[0]

    async def keep(self, worker: Worker) -> None:
        """Restart `worker` whenever it exits on its own, with backoff; return when stopping."""
        delay = BACKOFF_INITIAL
        while not self.stopping.is_set():
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.ready = False
            self._count_ready()
            if self.stopping.is_set():
                return
            uptime = time.monotonic() - worker.started_at
            delay = BACKOFF_INITIAL if uptime > STABLE_AFTER else min(delay * 2, BACKOFF_MAX)
            metrics.WORKER_RESTARTS.inc()
            log_event(_log, logging.ERROR, "worker exited; restarting", worker=worker.index, exit_code=code,
                      restart_in_seconds=delay)
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await worker.start(self.config)
                self._count_ready()
                log_event(_log, logging.INFO, "worker restarted", worker=worker.index, pid=worker.proc.pid)
            except CAError as exc:
                log_event(_log, logging.ERROR, "worker restart failed", worker=worker.index, error=exc.message)

    async def stop_all(self) -> None:
        for worker in self.workers:
            worker.terminate()
        deadline = self.config.grace_seconds + 10
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                await asyncio.wait_for(worker.proc.wait(), max(0.1, deadline))
            except asyncio.TimeoutError:
                log_event(_log, logging.WARNING, "worker did not stop in time; killing it", worker=worker.index)
                worker.proc.kill()
                await worker.proc.wait()
            if worker.link is not None:
                worker.link.close()
        self._count_ready()


async def supervise(config: ServeConfig) -> None:
    from secmesh.ca.admin import start_admin

    count = config.worker_count()
    preflight(config)
    sup = Supervisor(config, count)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sup.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, log_event, _log, logging.INFO,
                            "SIGHUP ignored: the CA reloads its directory by itself (--reload-interval)")
    await sup.start_all()
    admin = None
    if config.admin:
        admin_host, admin_port = parse_hostport(config.admin, what="admin")
        admin = await start_admin(admin_host, admin_port, sup.ready, sup.gather_metrics)
    keepers = [loop.create_task(sup.keep(w), name=f"keep-worker-{w.index}") for w in sup.workers]
    log_event(_log, logging.INFO, "CA serving with workers", listen=config.listen, workers=count,
              admin=config.admin or None, pids=[w.proc.pid for w in sup.workers if w.proc is not None])
    try:
        await sup.stopping.wait()
    finally:
        sup.stopping.set()
        log_event(_log, logging.INFO, "CA stopping workers", workers=count, grace_seconds=config.grace_seconds)
        await sup.stop_all()
        for task in keepers:
            task.cancel()
        if admin is not None:
            admin.close()
            await admin.wait_closed()
