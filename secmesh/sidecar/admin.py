"""The admin port (loopback only): /ready, /live, /metrics, /config_dump, /certs, /policies, /clusters.

A deliberately tiny HTTP/1.x responder on an asyncio Protocol: one request per connection,
GET only, no keep-alive. It never shows a private key; /certs shows the SPIFFE ID, expiry and
fingerprint of what is held.

With `--workers N` it runs in worker 0 but speaks for the whole sidecar through the supervisor's
runtime directory (`worker_state.RuntimeDir`): `/metrics` merges every worker's values, `/ready`
is 200 only when every worker holds a certificate and listens, `/live` when the supervisor and
every worker are alive. `/clusters` lists each worker's own pools and ejections (the others' as
they published them, at most a second old). `/certs` and `/policies` stay worker 0's own view
(every worker loads the same sources).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from secmesh.metrics import exposition
from secmesh.sidecar.certstore import CertStore
from secmesh.sidecar.config import SidecarConfig

if TYPE_CHECKING:
    from secmesh.sidecar.worker_state import RuntimeDir

log = logging.getLogger("secmesh.sidecar.admin")
MAX_REQUEST = 8192


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


class AdminState:
    """What the endpoints report; `is_ready` is a callable so the app decides what ready means."""

    def __init__(self, config: SidecarConfig, store: CertStore, is_ready: Callable[[], bool],
                 policies: Any = None, *, runtime: RuntimeDir | None = None) -> None:
        self.config = config
        self.runtime = runtime     # N > 1: every worker's readiness and metrics
        self.store = store
        self.is_ready = is_ready
        self.policies = policies   # PolicySource or None
        self.clusters: Callable[[], dict[str, Any]] | None = None   # L7 upstreams (set once they exist)

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/ready":
            return self._ready()
        if path == "/live":
            if self.runtime is not None and not self.runtime.all_live():
                return 503, "text/plain", b"not live: " + self._workers(lambda w: w.alive) + b"\n"
            return 200, "text/plain", b"live\n"
        if path == "/metrics":
            body = self.runtime.exposition() if self.runtime is not None else exposition()
            return 200, "text/plain; version=0.0.4; charset=utf-8", body
        if path == "/config_dump":
            body = json.dumps(_jsonable(dataclasses.asdict(self.config)), indent=2, default=str)
            return 200, "application/json", body.encode() + b"\n"
        if path == "/certs":
            m = self.store.material
            state = self.store.holder.state
            doc: dict[str, Any] = {"ready": m is not None, "source": self.store.source,
                                   "last_error": self.store.last_error}
            if m is not None and state is not None:
                doc.update(spiffe_id=str(m.spiffe_id), not_after=m.not_after.isoformat(),
                           roots_not_after=m.roots_not_after.isoformat(), fingerprint_sha256=m.fingerprint,
                           version=state.version)
            return 200, "application/json", json.dumps(doc, indent=2).encode() + b"\n"
        if path == "/policies":
            return 200, "application/json", json.dumps(self._policies(), indent=2).encode() + b"\n"
        if path == "/clusters":   # L7 upstreams: endpoints, requests in flight, outlier ejections
            doc = self.clusters() if self.clusters is not None else {}
            if self.runtime is not None:
                # Each worker has its own pools and outlier detectors: one view per worker (the
                # others' as they published them, at most a second old).
                views = self.runtime.views("clusters")
                views[0] = doc
                doc = {"workers": {str(i): views[i] for i in sorted(views)}}
            return 200, "application/json", json.dumps(doc, indent=2).encode() + b"\n"
        return 404, "text/plain", b"not found\n"

    def _ready(self) -> tuple[int, str, bytes]:
        if not self.is_ready():
            return 503, "text/plain", b"not ready\n"
        if self.runtime is not None and not self.runtime.all_ready():
            return 503, "text/plain", b"not ready: " + self._workers(lambda w: w.ready) + b"\n"
        return 200, "text/plain", b"ready\n"

    def _workers(self, ok: Callable[[Any], bool]) -> bytes:
        """`worker 1 (pid 123)`: the workers that fail `ok`, for a human reading a probe's output."""
        assert self.runtime is not None
        bad = [f"worker {w.index} (pid {w.pid or '-'})" for w in self.runtime.workers() if not ok(w)]
        return (", ".join(bad) or "supervisor").encode()

    def _policies(self) -> dict[str, Any]:
        """The policy set in force (counts, version, last reload error) and each inbound port's mode."""
        src = self.policies
        if src is None:
            return {"enabled": False}
        from secmesh.sidecar.authz_policy import policy_label

        snap = src.current
        ports = {}
        for lst in self.config.listeners:
            if lst.kind == "inbound":
                mode, ref = snap.mode(lst.policy_port)
                ports[lst.name] = {"workload_port": lst.policy_port, "protocol": lst.protocol, "mtls_mode": mode.value,
                                   "peer_authentication": policy_label(ref) or None}
        return {"enabled": True, **snap.describe(), "last_error": src.last_error, "listeners": ports}


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, state: AdminState) -> None:
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > MAX_REQUEST:
                self._respond(431, "text/plain", b"request too large\n", head=False)
            return
        line = self.buf.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) < 2:
            self._respond(400, "text/plain", b"bad request\n", head=False)
            return
        try:
            status, ctype, body = self.state.route(parts[0], parts[1])
        except Exception as exc:  # an endpoint bug must not take the admin port down
            log.exception("admin endpoint failed")
            status, ctype, body = 500, "text/plain", f"error: {exc!r}\n".encode()
        self._respond(status, ctype, body, head=parts[0] == "HEAD")

    def _respond(self, status: int, ctype: str, body: bytes, *, head: bool) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "")
        hdr = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
               f"Connection: close\r\n\r\n").encode()
        assert self.transport is not None
        self.transport.write(hdr if head else hdr + body)
        self.transport.close()


async def start_admin(state: AdminState, host: str, port: int, *, sock: Any = None) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(lambda: _AdminProtocol(state), sock=sock)
    return await loop.create_server(lambda: _AdminProtocol(state), host, port, reuse_address=True)
