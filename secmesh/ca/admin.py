"""A tiny plain-HTTP admin endpoint on loopback: `/metrics` (Prometheus text) and `/ready`.

Hand-rolled on asyncio streams (one request per connection) so it shares the CA's event loop
and needs no extra dependency; it is for scrapers and probes, not for browsers.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from secmesh.metrics import exposition

MAX_HEADER_BYTES = 8192


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


def route(method: str, path: str, ready: bool, metrics_body: bytes | None = None) -> bytes:
    """Pure: request line → full HTTP response bytes (`metrics_body`: text already gathered, else ours)."""
    path = path.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n")
    if path == "/metrics":
        return _response("200 OK", exposition() if metrics_body is None else metrics_body, CONTENT_TYPE_LATEST)
    if path == "/ready":
        return _response("200 OK", b"ready\n") if ready else _response("503 Service Unavailable", b"not ready\n")
    return _response("404 Not Found", b"not found\n")


async def start_admin(host: str, port: int, is_ready: Callable[[], bool],
                      gather_metrics: Callable[[], Awaitable[bytes]] | None = None) -> asyncio.Server:
    """`gather_metrics`: where /metrics comes from when it is not this process's registry (workers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3:
                writer.write(_response("400 Bad Request", b"bad request\n"))
            else:
                body = None
                if gather_metrics is not None and parts[1].split("?", 1)[0] == "/metrics":
                    body = await gather_metrics()
                writer.write(route(parts[0], parts[1], is_ready(), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEADER_BYTES)
