"""Real peers for the sidecar tests: backends (HTTP, echo), TLS clients, admin scraping, sidecar start."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.proc import Process, free_port, start_cli, wait_until


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = b"ok\n" if self.path == "/ok" else b"x" * 65536
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.server.received += len(data)  # type: ignore[attr-defined]
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Backend:
    """A backend in a thread: `kind` = "http" (GET /ok → ok) or "echo" (counts connections and bytes)."""

    def __init__(self, kind: str = "echo") -> None:
        if kind == "http":
            self.server: socketserver.TCPServer = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
            self.server.daemon_threads = True  # type: ignore[attr-defined]
        else:
            self.server = _EchoServer(("127.0.0.1", 0), _Echo)
            self.server.connections = 0  # type: ignore[attr-defined]
            self.server.received = 0  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return getattr(self.server, "connections", 0)

    @property
    def received(self) -> int:
        return getattr(self.server, "received", 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None, *,
                   min_version: ssl.TLSVersion | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def first_read(sock: socket.socket) -> bytes | None:
    """The first read after a handshake: b'' (EOF) or None (reset) when the server refused (P8)."""
    try:
        return sock.recv(100)
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return None


def echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def admin_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name = head.split("{", 1)[0]
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_ready(admin_port: int, proc: Process, timeout: float = 20.0) -> None:
    wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=timeout, what="sidecar /ready",
               proc=proc.popen)


def start_sidecar(tmp_path: Path, name: str, *args: str, ready: bool = True) -> tuple[Process, int]:
    """`secmesh sidecar ARGS… --admin 127.0.0.1:P` (flag mode) or with --config; waits for /ready."""
    admin = free_port()
    proc = start_cli("sidecar", *args[:1], *args[1:], "--admin", f"127.0.0.1:{admin}", tmp_path=tmp_path, name=name) \
        if args and args[0] in ("inbound", "outbound") else \
        start_cli("sidecar", "--admin", f"127.0.0.1:{admin}", *args, tmp_path=tmp_path, name=name)
    if ready:
        try:
            wait_ready(admin, proc)
        except AssertionError:
            proc.stop()
            raise AssertionError(f"{name} not ready; log:\n{proc.output()[-3000:]}") from None
    return proc, admin
