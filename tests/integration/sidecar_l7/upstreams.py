"""Upstreams the retry-buffer and h2-keepalive tests control, plus a one-sidecar launcher.

- `RecordingApp`: HTTP/1.1 app that records every request body it receives and answers
  `/once503/…` with 503 the first time a path is seen (200 + the body's length after), so a
  test sees exactly what each attempt carried.
- `H2Upstream`: a prior-knowledge h2c server (the `h2` library, one thread per connection).
  `freeze()` makes every open connection go silent: it keeps reading (to notice the close) but
  answers nothing, not even PING ACKs — a peer that vanished without a FIN. New connections
  answer normally.
- `one_sidecar`: a single sidecar with an outbound `protocol: http` listener routed to the
  clusters given, started as a process and stopped by the caller.
"""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from tests.integration.sidecar.harness import start_sidecar
from tests.integration.sidecar.pki import TestCA, sa
from tests.support.proc import Process, free_port


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        srv = self.server
        with srv.lock:  # type: ignore[attr-defined]
            first = self.path not in srv.seen  # type: ignore[attr-defined]
            srv.seen.add(self.path)  # type: ignore[attr-defined]
            srv.bodies.append((self.command, self.path, body))  # type: ignore[attr-defined]
        status = 503 if first and self.path.startswith("/once503/") else 200
        out = b"%d\n" % len(body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = do_PUT = do_GET = _handle

    def log_message(self, *args: object) -> None:
        pass


class RecordingApp:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        self.server.daemon_threads = True
        self.server.lock = threading.Lock()  # type: ignore[attr-defined]
        self.server.seen = set()  # type: ignore[attr-defined]
        self.server.bodies = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[tuple[str, bytes]]:
        with self.server.lock:  # type: ignore[attr-defined]
            return [(m, b) for m, p, b in self.server.bodies if p == path]  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _H2Conn:
    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock, self.index = sock, index
        self.frozen = False
        self.closed_at: float | None = None
        self.requests = self.pings = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        try:
            self.sock.sendall(conn.data_to_send())
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                if self.frozen:
                    continue                        # silent: no ACK, no answer
                for e in conn.receive_data(data):
                    if isinstance(e, h2.events.PingReceived):
                        self.pings += 1                 # h2 queues the ACK itself
                    elif isinstance(e, h2.events.RequestReceived):
                        self.requests += 1
                        body = b"h2 conn %d\n" % self.index
                        conn.send_headers(e.stream_id, [(b":status", b"200"),
                                                        (b"content-length", b"%d" % len(body))])
                        conn.send_data(e.stream_id, body, end_stream=True)
                self.sock.sendall(conn.data_to_send())
        except OSError:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.sock.close()


class H2Upstream:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.conns: list[_H2Conn] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(_H2Conn(sock, len(self.conns)))

    def freeze(self) -> None:
        for c in self.conns:
            c.frozen = True

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        for c in self.conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def one_sidecar(tmp: Path, clusters: str, routes: str) -> tuple[Process, int, int]:
    """(process, listener port, admin port) of a sidecar whose outbound `http` listener has `routes`."""
    ca = TestCA("cluster.local")
    ca_pem = ca.write(tmp, "ca")
    cert, key = ca.issue(sa("default", "client")).write(tmp, "client")
    port = free_port()
    text = textwrap.dedent("""\
        trust_domain: cluster.local
        workers: 1
        certs: {{source: file, file: {{cert: {cert}, key: {key}, bundle: {bundle}}}}}
        clusters:
        {clusters}
        listeners:
          - name: out
            kind: outbound
            address: 127.0.0.1:{port}
            upstream: 127.0.0.1:{dead}
            peer_ids: ["spiffe://cluster.local/ns/default/sa/server"]
            protocol: http
            http:
              routes:
        {routes}
        """).format(cert=cert, key=key, bundle=ca_pem, port=port, dead=free_port(),
                    clusters=textwrap.indent(textwrap.dedent(clusters).strip(), "  "),
                    routes=textwrap.indent(textwrap.dedent(routes).strip(), "        "))
    (tmp / "sidecar.yaml").write_text(text)
    proc, admin = start_sidecar(tmp, "sidecar", "--config", str(tmp / "sidecar.yaml"))
    return proc, port, admin
