"""`--workers N`: N forked processes serving the same ports, watched by a supervisor.

The supervisor binds every listener before forking: N SO_REUSEPORT sockets per listener (worker
i serves socket i, so the kernel spreads new connections over the workers with no shared state
on the data path) and the admin socket (served by worker 0). Because the supervisor holds them:
- a worker that dies is restarted (at most once per second) on the *same* socket, so the
  connections queued on it wait for the new worker instead of being reset;
- hot restart hands the supervisor's sockets to the successor's supervisor (`hot_restart`).
The supervisor forwards SIGTERM/SIGINT/SIGHUP, tells the runtime directory when a worker exits
(`worker_state.RuntimeDir.forget`) and exits when every worker has exited after a stop. It
forks before any event loop, gRPC channel or TLS context exists, so children inherit nothing
that breaks across fork. With N = 1 there is no supervisor: the worker runs in the foreground
process (what benchmark harnesses that stop by PID need).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import socket
import time
from typing import TYPE_CHECKING, Callable

from secmesh.log import log_event

if TYPE_CHECKING:
    from secmesh.sidecar.config import SidecarConfig

log = logging.getLogger("secmesh.sidecar.workers")


def bind_all(config: SidecarConfig, count: int, inherited: dict[str, socket.socket]) -> dict[str, socket.socket]:
    """The supervisor's sockets: `admin` and `<listener>/<i>` for i < count (SO_REUSEPORT each).

    Sockets handed over by a previous process (`inherited`, same naming; a single-worker
    predecessor's `inbound` is `inbound/0`) are reused, so a hot restart keeps every accept
    queue; the rest are bound here. Raises OSError (after closing what it bound) when a port is taken.
    """
    from secmesh.sidecar.config import split_host_port
    from secmesh.sidecar.hot_restart import split_name
    from secmesh.sidecar.listener import bind_socket

    pool = {split_name(name): sock for name, sock in inherited.items()}
    out: dict[str, socket.socket] = {}
    try:
        if config.admin.enabled and config.admin.address:
            host, port = split_host_port(config.admin.address, what="admin.address")
            out["admin"] = pool.pop(("admin", 0), None) or bind_socket(host, port, reuse_port=False)
        for lcfg in config.listeners:
            host, port = lcfg.listen
            for i in range(count):
                sock = pool.pop((lcfg.name, i), None)
                if sock is None:     # port 0: every worker's socket joins the first one's port
                    sock = bind_socket(host, port or (out[f"{lcfg.name}/0"].getsockname()[1] if i else 0))
                out[f"{lcfg.name}/{i}"] = sock
    except OSError:
        for sock in out.values():
            sock.close()
        raise
    for (name, i), sock in pool.items():
        # fewer workers than the predecessor: nobody accepts on its extra sockets, so the connections the
        # kernel still queues there are reset when the old process exits (keep `workers` when hot restarting)
        log_event(log, logging.WARNING, "hot restart: dropping a socket no worker serves", socket=f"{name}/{i}")
        sock.close()
    return out


def worker_sockets(sockets: dict[str, socket.socket], index: int) -> dict[str, socket.socket]:
    """In worker `index` (after fork): its own socket per listener (and admin for worker 0), by listener name.

    The other workers' copies are closed in this process only; the supervisor keeps them open.
    """
    from secmesh.sidecar.hot_restart import split_name

    mine: dict[str, socket.socket] = {}
    for key, sock in sockets.items():
        base, i = split_name(key)
        if i == index:
            mine[base] = sock
        else:
            sock.close()
    return mine


def _spawn(index: int, target: Callable[[int], int]) -> int:
    pid = os.fork()
    if pid == 0:   # child
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = target(index)
        except BaseException:  # noqa: BLE001 - report and exit, never return into the parent's code
            logging.getLogger("secmesh.sidecar").exception("worker crashed")
        finally:
            os._exit(code)
    return pid


class Supervisor:
    """Fork `count` workers, restart the ones that die, stop them all on SIGTERM or `stop()`."""

    def __init__(self, count: int, target: Callable[[int], int], *,
                 on_exit: Callable[[int, int], None] | None = None,
                 on_started: Callable[[], None] | None = None) -> None:
        self.count = count
        self.target = target
        self.on_exit = on_exit            # (index, pid) after a worker was reaped
        self.on_started = on_started      # after the first N forks (start threads here, not before forking)
        self.stopping = False
        self.children: dict[int, int] = {}   # pid -> worker index
        self._lock = threading.RLock()   # re-entrant: the signal handler runs on the main thread

    def signal(self, sig: int) -> None:
        """Forward `sig` to every worker; SIGTERM/SIGINT also mean: do not restart them."""
        with self._lock:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            pids = list(self.children)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Drain and stop every worker (SIGTERM); safe from another thread (hot restart's)."""
        self.signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: self.signal(s))
        with self._lock:
            for i in range(self.count):
                self.children[_spawn(i, self.target)] = i
        log_event(log, logging.INFO, "workers started", workers=self.count,
                  pids=[pid for pid, _ in sorted(self.children.items(), key=lambda kv: kv[1])])   # by index
        if self.on_started is not None:
            self.on_started()
        worst = 0
        last_restart: dict[int, float] = {}
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            with self._lock:
                index = self.children.pop(pid, None)
            if index is None:
                continue
            if self.on_exit is not None:
                self.on_exit(index, pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:                # the exit code is the workers' at shutdown (a restarted crash is not)
                worst = max(worst, abs(code))
                continue
            log_event(log, logging.ERROR, "worker exited unexpectedly; restarting", worker=index, pid=pid, code=code)
            wait = 1.0 - (time.monotonic() - last_restart.get(index, 0.0))
            if wait > 0:
                time.sleep(wait)
            last_restart[index] = time.monotonic()
            with self._lock:
                if not self.stopping:
                    child = _spawn(index, self.target)
                    self.children[child] = index
                    log_event(log, logging.INFO, "worker restarted", worker=index, pid=child)
        return worst


def run_workers(count: int, target: Callable[[int], int]) -> int:
    """N = 1: run in this process; N > 1: supervise N forked workers (no shared runtime directory)."""
    if count <= 1:
        return target(0)
    return Supervisor(count, target).run()
