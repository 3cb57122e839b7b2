"""Small real clients for the L7 tests: curl / nghttp / h2load runners and a raw HTTP/1.1 socket."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Callable

from tests.integration.sidecar.harness import metric
from tests.support.proc import wait_until


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=timeout)


def curl_status(*args: str) -> tuple[int, str]:
    """(status, body) of one request; status 0 when curl failed."""
    r = curl("-o", "-", "-w", "\n%{http_code}", *args)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def mtls_args(mesh: object) -> list[str]:
    m: Any = mesh
    return ["--cacert", str(m.ca_pem), "--cert", str(m.client_cert), "--key", str(m.client_key)]


class Raw:
    """A raw HTTP/1.1 client on one connection (plain or TLS); reads answers with a timeout."""

    def __init__(self, port: int, *, ctx: ssl.SSLContext | None = None, timeout: float = 5.0) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(s, server_hostname="localhost") if ctx is not None else s
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def response(self) -> tuple[int, dict[str, str], bytes] | None:
        """One response (Content-Length framed, as every answer in these tests); None on EOF."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                break
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self) -> bool:
        """True once the peer has closed (after whatever is buffered)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def get(path: str = "/ok", host: str = "svc", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def unread_socket(port: int) -> socket.socket:
    """A non-blocking client socket that will read nothing, with a receive buffer that holds little."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


def held_while_unread(mesh: Any, sock: socket.socket, ask: Callable[[], None], what: str) -> int:
    """Call `ask` (send more requests on `sock`, never read) until the client sidecar stops answering
    on `out-http` (no request answered over three polls); close `sock`; return how many KiB the
    sidecar grew meanwhile."""
    pid = mesh.procs["client"].pid
    rss_before = rss_kib(pid)
    seen: list[float] = []

    def stopped() -> bool:
        ask()
        seen.append(metric(mesh.metrics("client"), "secmesh_sidecar_http_requests_total", listener="out-http"))
        return len(seen) >= 4 and seen[-1] == seen[-4]

    try:
        wait_until(stopped, timeout=20, interval=0.25, what=what)
        return rss_kib(pid) - rss_before
    finally:
        sock.close()
