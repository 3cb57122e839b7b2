"""`--workers N`: N forked processes, each binding every listener with SO_REUSEPORT.

The kernel spreads new connections over the workers, so a sidecar uses N cores without any
shared state on the data path. The parent only supervises: it forwards SIGTERM/SIGINT/SIGHUP,
restarts a worker that dies unexpectedly (at most once per second), and exits when every
worker has exited after a stop. It forks before any event loop, gRPC channel or TLS context
exists, so children inherit nothing that breaks across fork. With N = 1 there is no parent:
the worker runs in the foreground process (what benchmark harnesses that stop by PID need).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

from secmesh.log import log_event

log = logging.getLogger("secmesh.sidecar.workers")


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


def run_workers(count: int, target: Callable[[int], int]) -> int:
    if count <= 1:
        return target(0)
    stopping = False
    children: dict[int, int] = {}   # pid -> worker index
    last_restart: dict[int, float] = {}

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(count):
        children[_spawn(i, target)] = i
    log_event(log, logging.INFO, "workers started", workers=count, pids=sorted(children))
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if stopping:
            continue
        log_event(log, logging.ERROR, "worker exited unexpectedly; restarting", worker=index, pid=pid, code=code)
        wait = 1.0 - (time.monotonic() - last_restart.get(index, 0.0))
        if wait > 0:
            time.sleep(wait)
        last_restart[index] = time.monotonic()
        if not stopping:
            children[_spawn(index, target)] = index
    return worst
