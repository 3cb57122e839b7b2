"""Entry point of one `ca serve` worker process: `python -m secmesh.ca.worker FD INDEX`.

The parent (`supervisor`) starts it with one end of a socketpair as file descriptor FD, sends
the resolved configuration on it, and waits for the worker's "ready". The worker asks the
kernel to SIGTERM it when the parent dies (Linux `PR_SET_PDEATHSIG`), so a killed parent never
leaves orphans holding the port; EOF on the channel stops it too.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: EOF on the channel still stops the worker
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)


class _WorkerField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def main(argv: list[str]) -> int:
    fd, index = int(argv[0]), int(argv[1])
    _die_with_parent(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sock = socket.socket(fileno=fd)

    from secmesh import log
    from secmesh.ca import workerlink

    try:
        kind, payload = workerlink.read_frame_blocking(sock)
    except EOFError:
        return 0
    if kind != workerlink.CONFIG:
        print(f"worker {index}: expected a configuration frame, got {kind!r}", file=sys.stderr)
        return 2
    config = workerlink.config_from_json(payload)
    log.setup(config.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))

    import asyncio

    import uvloop

    from secmesh.ca.server import serve

    async def run() -> None:
        link = workerlink.WorkerSide(sock)
        await link.open()
        await serve(config, link=link, worker=index)

    from secmesh.errors import SecmeshError

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run())
    except (SecmeshError, OSError) as exc:
        log.log_event(logging.getLogger("secmesh.ca.worker"), logging.ERROR, "worker failed",
                      error=getattr(exc, "message", None) or str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
