"""Hot restart, as MOSN does it: the new process takes the listening sockets from the old one.

    new process                              old process (HotRestartServer thread)
    connect(hot_restart_socket) ───────────▶ accept
    {"op": "sockets"} ─────────────────────▶
                       ◀──── SCM_RIGHTS ──── {"names": [...]} + one fd per name (admin, listeners)
    wait for a certificate, serve on the fds  (both processes accept on the same sockets now)
    {"op": "drain"} ───────────────────────▶
                       ◀─────────────────── {"ok": true}; old stops accepting, drains, exits 0
    bind hot_restart_socket for the next one

The kernel keeps one accept queue per listening socket, and both processes hold the same
socket (the fd is duplicated, not re-bound), so a connection arriving during the swap is
accepted by one of them: none is refused. The old process never closes the shared socket
under the new one: closing its own fd leaves the new one's intact. The exchange is a few
hundred bytes, so both ends are plain blocking sockets; the old side runs in a daemon thread
and hands the drain request to the event loop with `call_soon_threadsafe`. If the new process
dies before asking to drain, the old one notices EOF and keeps serving.

With `--workers N` the supervisor holds every socket (`<listener>/<i>` for worker i, and `admin`)
and speaks this protocol for all its workers (`SupervisorHandOver`): it asks the old process to
drain only once every worker of its own is ready, and on drain it stops its workers with SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

from secmesh.log import log_event

log = logging.getLogger("secmesh.sidecar.hot_restart")
MAX_FDS = 64
MAX_MSG = 65536
TAKE_OVER_TIMEOUT = 10.0


def _send(conn: socket.socket, doc: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(doc).encode() + b"\n"
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


def _recv_line(conn: socket.socket) -> dict[str, object] | None:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(MAX_MSG)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_MSG:
            raise ValueError("hot-restart message too large")
    return json.loads(buf)


@dataclass
class Inherited:
    """Sockets taken from the previous process, by name (`admin`, or a listener's name)."""

    sockets: dict[str, socket.socket]
    conn: socket.socket = field(repr=False)
    old_pid: int = 0

    def finish(self) -> None:
        """Tell the old process to drain (call once this process serves); waits for its ack."""
        try:
            _send(self.conn, {"op": "drain"})
            _recv_line(self.conn)
        finally:
            self.conn.close()
        log_event(log, logging.INFO, "hot restart: old process draining", old_pid=self.old_pid)


def take_over(path: str) -> Inherited | None:
    """Ask a running sidecar at `path` for its listening sockets; None if nobody listens there."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    try:
        conn.settimeout(TAKE_OVER_TIMEOUT)
        _send(conn, {"op": "sockets", "pid": os.getpid()})
        msg, fds, _flags, _addr = socket.recv_fds(conn, MAX_MSG, MAX_FDS)
        doc = json.loads(msg)
        names = list(doc["names"])
        if len(names) != len(fds):
            raise ValueError(f"got {len(fds)} descriptors for {len(names)} sockets")
        sockets = {}
        for name, fd in zip(names, fds):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            sockets[name] = sock
        conn.settimeout(None)
    except BaseException:
        conn.close()
        raise
    log_event(log, logging.INFO, "hot restart: took the listening sockets", old_pid=doc.get("pid"),
              sockets=sorted(sockets))
    return Inherited(sockets, conn, int(doc.get("pid") or 0))


class HotRestartServer:
    """The old side: hand the sockets to whoever connects, then drain when it says so."""

    def __init__(self, path: str, sockets: Callable[[], dict[str, socket.socket]],
                 on_drain: Callable[[], None]) -> None:
        self.path = path
        self.sockets = sockets
        self.on_drain = on_drain
        self.replaced = False
        self._sock: socket.socket | None = None
        self._ino = 0

    def start(self) -> None:
        try:
            os.unlink(self.path)      # stale, or the previous process's (it is draining now)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(4)
        self._sock, self._ino = sock, os.stat(self.path).st_ino
        threading.Thread(target=self._serve, name="hot-restart", daemon=True).start()
        log_event(log, logging.INFO, "hot restart socket listening", path=self.path)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        if not self.replaced:         # after a hand-over the path belongs to the new process
            try:
                if os.stat(self.path).st_ino == self._ino:
                    os.unlink(self.path)
            except OSError:
                pass

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if self._hand_over(conn):
                        return
                except (OSError, ValueError) as exc:
                    log_event(log, logging.WARNING, "hot restart: hand-over failed; still serving", error=repr(exc))

    def _hand_over(self, conn: socket.socket) -> bool:
        req = _recv_line(conn)
        if req is None or req.get("op") != "sockets":
            return False
        socks = self.sockets()
        names = sorted(socks)
        _send(conn, {"names": names, "pid": os.getpid()}, [socks[n].fileno() for n in names])
        log_event(log, logging.INFO, "hot restart: sockets handed over", new_pid=req.get("pid"), sockets=names)
        req = _recv_line(conn)        # the new process asks once it serves (or dies: EOF)
        if req is None or req.get("op") != "drain":
            log_event(log, logging.WARNING, "hot restart: new process went away before taking over; still serving")
            return False
        self.replaced = True
        self.on_drain()
        _send(conn, {"ok": True})
        return True


def split_name(name: str) -> tuple[str, int]:
    """`inbound/1` → ("inbound", 1): a supervisor hands over each worker's socket of a listener;
    a single-worker sidecar's `inbound` is worker 0's."""
    base, _, idx = name.partition("/")
    return base, int(idx) if idx.isdigit() else 0


class SupervisorHandOver:
    """Hot restart for `--workers N`: the supervisor, which holds every socket, is the one that swaps.

    New side: once every worker of ours is ready (their files in the runtime directory), tell the
    previous process to drain. Both sides: then serve the hot-restart socket, handing over all our
    sockets to a successor and stopping our workers (`stop`, i.e. SIGTERM: they drain) when it asks.
    Runs in a daemon thread, since the supervisor's main thread sits in `os.wait()`.
    """

    def __init__(self, path: str, sockets: dict[str, socket.socket], inherited: Inherited | None,
                 all_ready: Callable[[], bool], stop: Callable[[], None], poll: float = 0.05) -> None:
        self.path = path
        self.server = HotRestartServer(path, lambda: sockets, stop)
        self.inherited = inherited
        self.all_ready = all_ready
        self.poll = poll
        self._closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="hot-restart-supervisor", daemon=True).start()

    def _run(self) -> None:
        while not self.all_ready():
            if self._closed.wait(self.poll):
                return
        if self.inherited is not None:
            try:
                self.inherited.finish()
            except OSError as exc:            # the old one is gone already: nothing to drain
                log_event(log, logging.WARNING, "hot restart: drain request failed", error=repr(exc))
            self.inherited = None
        if not self._closed.is_set():
            self.server.start()

    def close(self) -> None:
        self._closed.set()
        self.server.close()
