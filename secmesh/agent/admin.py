"""Loopback admin endpoint: `/ready`, `/metrics`, `/identities` (no secrets, ever).

A deliberately tiny HTTP/1.0-style server on asyncio streams: one request per connection,
GET only. `/identities` lists SPIFFE IDs, serials and expiry so an operator can see which
identity is at risk without reading logs; keys and tokens are not reachable from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from secmesh.metrics import exposition

_log = logging.getLogger(__name__)


class AdminServer:
    def __init__(self, host: str, port: int, *, ready: Callable[[], tuple[bool, str]],
                 identities: Callable[[], list[dict]]) -> None:
        self.host = host.strip("[]")
        self.port = port
        self._ready = ready
        self._identities = identities
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while True:  # drain headers
                header = await asyncio.wait_for(reader.readline(), 5)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self._route(method, path)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/ready":
            ok, why = self._ready()
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", (why + "\n").encode()
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", exposition()
        if path == "/identities":
            return "200 OK", "application/json", json.dumps(self._identities(), indent=1).encode() + b"\n"
        return "404 Not Found", "text/plain", b"not found\n"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
