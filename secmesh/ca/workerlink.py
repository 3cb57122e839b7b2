"""The parent ↔ worker channel of `ca serve --workers N`: one socketpair, length-prefixed frames.

Frames are `kind (1 byte) | length (4 bytes, big endian) | payload`. Parent → worker: `C` the
resolved `ServeConfig` as JSON (first frame, read before the event loop starts), `M` "send your
metrics". Worker → parent: `R` ready (JSON: pid, serving certificate serial), `M` the worker's
Prometheus text. No file system is involved, so it works with a read-only root file system, and
a worker learns that its parent died from EOF on the socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import struct
from pathlib import Path
from typing import Any, Callable

from secmesh.ca.config import ServeConfig

HEADER = struct.Struct("!cI")
MAX_FRAME = 16 << 20
CONFIG, METRICS, READY = b"C", b"M", b"R"


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def config_to_json(config: ServeConfig) -> bytes:
    data = dataclasses.asdict(config)
    data["dir"] = str(config.dir)
    return json.dumps(data).encode()


def config_from_json(payload: bytes) -> ServeConfig:
    data = json.loads(payload)
    data["dir"] = Path(data["dir"])
    return ServeConfig(**data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("parent closed the worker channel")
        buf.extend(chunk)
    return bytes(buf)


def read_frame_blocking(sock: socket.socket) -> tuple[bytes, bytes]:
    """Before the event loop exists (the worker reading its configuration)."""
    kind, length = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is too large")
    return kind, _recv_exactly(sock, length)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is too large")
    return kind, await reader.readexactly(length)


class WorkerSide:
    """The worker's end: announce readiness, answer metrics requests, notice the parent's death."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None

    async def open(self) -> None:
        self.sock.setblocking(False)
        self._reader, self._writer = await asyncio.open_connection(sock=self.sock)

    async def ready(self, info: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(encode(READY, json.dumps(info).encode()))
        await self._writer.drain()

    async def serve(self, exposition: Callable[[], bytes]) -> None:
        """Answer `M` frames until the parent closes the channel (then return: the caller stops)."""
        assert self._reader is not None and self._writer is not None
        while True:
            try:
                kind, _ = await read_frame(self._reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if kind == METRICS:
                self._writer.write(encode(METRICS, exposition()))
                await self._writer.drain()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()


class ParentSide:
    """The parent's end for one worker: wait for `R`, ask for metrics (one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.info: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> ParentSide:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send_config(self, config: ServeConfig) -> None:
        self.writer.write(encode(CONFIG, config_to_json(config)))
        await self.writer.drain()

    async def wait_ready(self) -> dict[str, Any]:
        kind, payload = await read_frame(self.reader)
        if kind != READY:
            raise ValueError(f"unexpected frame {kind!r} from a starting worker")
        self.info = json.loads(payload)
        return self.info

    async def metrics(self, timeout: float = 2.0) -> bytes:
        async with self._lock:
            self.writer.write(encode(METRICS))
            await self.writer.drain()
            kind, payload = await asyncio.wait_for(read_frame(self.reader), timeout)
            if kind != METRICS:
                raise ValueError(f"unexpected frame {kind!r} from a worker")
            return payload

    def close(self) -> None:
        self.writer.close()
