"""The apps behind the L7 sidecars: an HTTP/1.1 app and a gRPC app (real grpcio, h2c), in threads.

The HTTP app answers `/ok`, `/64k`, `/bytes/N` (N bytes, chunked in 64 KiB writes), `/headers`
(the request headers it received, as JSON), `/status/N`, `/flaky/N` (503 the first N times),
`POST /echo` (the body back), and counts connections and requests, so tests can see what
reached the app (nothing, for a denied request) and how the pool reuses connections.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import grpc


class _App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # headers and body are separate writes: no 40 ms delayed-ACK stalls

    def setup(self) -> None:
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.connections += 1  # type: ignore[attr-defined]

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _count(self) -> None:
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802
        self._count()
        p = self.path
        if p == "/ok":
            self._send(200, b"ok\n")
        elif p == "/64k":
            self._send(200, b"x" * 65536)
        elif p.startswith("/bytes/"):
            n = int(p.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"y" * 65536
            try:
                while n > 0:
                    self.wfile.write(block[:min(n, len(block))])
                    n -= len(block)
            except OSError:
                pass
        elif not p.startswith(("/status/", "/flaky/", "/sleep/")):
            hdrs: dict[str, list[str]] = {}
            for k, v in self.headers.items():
                hdrs.setdefault(k.lower(), []).append(v)
            doc = {"path": p, "headers": hdrs, "app": self.server.name}  # type: ignore[attr-defined]
            self._send(200, json.dumps(doc).encode(), "application/json")
        elif p.startswith("/status/"):
            self._send(int(p.split("/")[2]), b"status\n")
        elif p.startswith("/flaky/"):
            with self.server.lock:  # type: ignore[attr-defined]
                self.server.flaky += 1  # type: ignore[attr-defined]
                n = self.server.flaky  # type: ignore[attr-defined]
            self._send(503 if n <= int(p.split("/")[2]) else 200, b"flaky %d\n" % n)
        elif p.startswith("/sleep/"):
            time.sleep(float(p.split("/")[2]))
            self._send(200, b"slept\n")

    do_DELETE = do_GET
    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        self._count()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(200, body, "application/octet-stream")

    def log_message(self, *args: object) -> None:
        pass


class HttpApp:
    def __init__(self, name: str = "app") -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
        self.server.daemon_threads = True
        self.server.lock = threading.Lock()  # type: ignore[attr-defined]
        self.server.connections = 0  # type: ignore[attr-defined]
        self.server.requests = []  # type: ignore[attr-defined]
        self.server.flaky = 0  # type: ignore[attr-defined]
        self.server.name = name  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return self.server.connections  # type: ignore[attr-defined]

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(self.server.requests)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# === gRPC (raw bytes messages; no generated stubs needed) =================================

SERVICE = "test.Echo"


def _unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    ctx.send_initial_metadata((("x-initial", "yes"),))
    return b"echo:" + req


def _server_stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(req or b"3")):
        yield b"item-%d" % i


def _client_stream(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
    return b"+".join(reqs)


def _bidi(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
    for r in reqs:
        yield r.upper()


def _fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    ctx.set_trailing_metadata((("x-detail", "trailing-value"), ("x-bin-bin", b"\x00\x01")))
    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: " + req.decode())
    return b""


def _slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    deadline = time.monotonic() + float(req or b"2")
    while time.monotonic() < deadline and ctx.is_active():
        time.sleep(0.01)
    return b"late"


def _metadata(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    return json.dumps(sorted((k, v if isinstance(v, str) else "<bin>") for k, v in ctx.invocation_metadata())).encode()


class GrpcApp:
    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Slow": grpc.unary_unary_rpc_method_handler(_slow),
            "Metadata": grpc.unary_unary_rpc_method_handler(_metadata),
            "Admin": grpc.unary_unary_rpc_method_handler(_unary),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.stop(0).wait()


class GrpcClient:
    """Raw-bytes calls on `test.Echo` over an insecure channel (the sidecar's plaintext outbound)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)

    def unary(self, method: str, req: bytes, **kw):  # type: ignore[no-untyped-def]
        return self.channel.unary_unary(f"/{SERVICE}/{method}")

    def uu(self, method: str):  # type: ignore[no-untyped-def]
        return self.channel.unary_unary(f"/{SERVICE}/{method}")

    def us(self, method: str):  # type: ignore[no-untyped-def]
        return self.channel.unary_stream(f"/{SERVICE}/{method}")

    def su(self, method: str):  # type: ignore[no-untyped-def]
        return self.channel.stream_unary(f"/{SERVICE}/{method}")

    def ss(self, method: str):  # type: ignore[no-untyped-def]
        return self.channel.stream_stream(f"/{SERVICE}/{method}")

    def close(self) -> None:
        self.channel.close()


class TunnelApp:
    """A WebSocket-style upgrade endpoint: answers 101 to an `Upgrade: websocket` request, then echoes
    raw bytes upper-cased (enough to prove the tunnel is opaque both ways; no frame parsing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            self.heads.append(head)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            data = rest
            while True:
                if data:
                    conn.sendall(data.upper())
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return

    def close(self) -> None:
        self.sock.close()
