"""The orders app: a tiny asyncio HTTP/1.1 server that echoes what reached it, as JSON.

It stands for any plaintext service behind a sidecar. The echo shows the method, path and
headers the app received — including `x-forwarded-client-cert` when the sidecar adds one — so
the user sees what crossed the mesh. `python -m secmesh.demo.backend --listen 127.0.0.1:P`.
Handles keep-alive and Content-Length bodies; anything else gets a 400 and the connection closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

MAX_HEAD = 16384


class _Stats:
    requests = 0


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise ValueError("request head too large") from None
    return head


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers → (method, path, version, lower-cased headers). Pure."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError("bad header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def response(status: int, body: bytes, *, keep_alive: bool) -> bytes:
    reason = {200: "OK", 400: "Bad Request"}.get(status, "")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    peer = writer.get_extra_info("peername") or ("", 0)
    try:
        while True:
            try:
                head = await _read_head(reader)
                if head is None:
                    return
                method, path, version, headers = parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
            except (ValueError, asyncio.IncompleteReadError) as exc:
                writer.write(response(400, json.dumps({"error": str(exc)}).encode(), keep_alive=False))
                await writer.drain()
                return
            _Stats.requests += 1
            keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
            echo = {"app": name, "request": _Stats.requests, "method": method, "path": path,
                    "headers": headers, "body_bytes": len(body),
                    "x-forwarded-client-cert": headers.get("x-forwarded-client-cert"),
                    "from": f"{peer[0]}:{peer[1]}"}
            print(json.dumps({"ts": time.time(), "msg": "request", "method": method, "path": path,
                              "xfcc": echo["x-forwarded-client-cert"]}), file=sys.stderr, flush=True)
            writer.write(response(200, json.dumps(echo, indent=2).encode() + b"\n", keep_alive=keep))
            await writer.drain()
            if not keep:
                return
    except ConnectionError:
        return
    finally:
        writer.close()


async def serve(host: str, port: int, name: str) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, name), host, port, limit=MAX_HEAD,
                                        reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"msg": "listening", "address": f"{host}:{port}", "app": name}), file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secmesh.demo.backend", description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (loopback by default)")
    p.add_argument("--name", default="orders", help="the app's name, echoed back")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host, int(port), args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
