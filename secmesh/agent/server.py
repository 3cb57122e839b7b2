"""The agent's Unix-socket gRPC server: claim the path safely, set its mode, stop gracefully.

grpc binds a `unix:` path by silently replacing whatever is there, even a socket another live
server is answering on (pitfall P3): a second agent (or a SPIRE agent already serving this
path, which istio-agent also defers to) would steal every new client. So before binding:

- the parent directory is created (0755) if missing;
- an exclusive `flock` on `<socket>.lock` makes two secmesh agents on one path mutually
  exclusive, race-free;
- the path is probed with `connect()`: if anything answers, refuse to start; if a socket file
  is there but nobody answers, it is stale and is removed; if it is not a socket at all, refuse
  (never delete a regular file on the operator's behalf).

The socket is bound under a umask that already excludes everything `mode` excludes, then
chmod'ed to exactly `mode`, so it is never reachable more widely than configured.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

import grpc
import grpc.aio

from secmesh.errors import SdsError

ABSENT, STALE, LIVE = "absent", "stale", "live"


def probe(path: Path) -> str:
    """ABSENT (nothing there), STALE (a socket file nobody answers on) or LIVE (a server answers)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISSOCK(st.st_mode):
        raise SdsError(f"{path} exists and is not a socket; refusing to replace it", reason="socket_in_use")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return LIVE
    except (ConnectionRefusedError, FileNotFoundError):
        return STALE
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return STALE
        if exc.errno in (errno.EAGAIN, errno.ETIMEDOUT):
            return LIVE  # backlog full: someone is listening
        raise SdsError(f"cannot probe {path}: {exc.strerror}", reason="socket_error") from None
    finally:
        s.close()


class SocketClaim:
    """Holds the lock on a socket path for as long as the agent serves it."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = Path(path)
        self.mode = mode
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        parent = self.path.parent
        try:
            parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise SdsError(f"cannot create socket directory {parent}: {exc.strerror}", reason="socket_error") from None
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SdsError(f"another secmesh agent holds {lock_path}; refusing to take over {self.path}",
                           reason="socket_in_use") from None
        self._lock_fd = fd
        state = probe(self.path)
        if state == LIVE:
            self.release()
            raise SdsError(f"a server is already answering on {self.path}; refusing to take it over "
                           "(stop it first, or choose another socket path)", reason="socket_in_use")
        if state == STALE:
            os.unlink(self.path)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


MAX_STREAMS = 100000


async def start_server(claim: SocketClaim, handlers: list[grpc.GenericRpcHandler],
                       services: list) -> grpc.aio.Server:
    """Bind and start the grpc.aio server on the claimed path; `services` are (register_fn, servicer)."""
    # gRPC core sheds calls that arrive faster than the application accepts them: past
    # `max_pending_requests` (default 1000) unaccepted calls it cancels new ones at random, all of
    # them past the hard limit (3000), before any handler runs (nothing logged). A burst of Envoy
    # streams reconnecting after an agent restart is such a wave, so it gets the stream limit.
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", MAX_STREAMS),  # istio-agent's limit
                                      ("grpc.server.max_pending_requests", MAX_STREAMS),
                                      ("grpc.server.max_pending_requests_hard_limit", MAX_STREAMS)])
    for register, servicer in services:
        register(server, servicer)
    if handlers:
        server.add_generic_rpc_handlers(tuple(handlers))
    old_umask = os.umask(0o777 & ~claim.mode)
    try:
        bound = server.add_insecure_port(f"unix:{claim.path}")
        await server.start()
    finally:
        os.umask(old_umask)
    if not bound:
        raise SdsError(f"cannot bind {claim.path}", reason="socket_error")
    os.chmod(claim.path, claim.mode)
    return server
