"""Helpers for the HTTP/1.1 codec tests: feed in fragments, parse answers back with httptools."""

from __future__ import annotations

import httptools

from secmesh.sidecar.codec import stream as s


def feed(codec, data: bytes, step: int | None = None) -> list:
    """Feed `data` whole or in `step`-byte fragments; return all events."""
    events: list = []
    if step is None:
        return codec.receive(data)
    for i in range(0, len(data), step):
        events += codec.receive(data[i:i + step])
    return events


def feed_sizes(codec, data: bytes, sizes) -> list:
    """Feed `data` in fragments whose sizes cycle through `sizes`."""
    events: list = []
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        events += codec.receive(data[i:i + n])
        i, k = i + n, k + 1
    return events


def body_of(events, sid: int) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, s.Data) and e.stream_id == sid)


class _Resp:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.messages.append({"headers": [], "body": b"", "complete": False})

    def on_header(self, n: bytes, v: bytes) -> None:
        self.messages[-1]["headers"].append((n.lower(), v))

    def on_headers_complete(self) -> None:
        self.messages[-1]["head_done"] = True
        self.messages[-1]["status"] = self.parser.get_status_code()

    def on_body(self, b: bytes) -> None:
        self.messages[-1]["body"] += b

    def on_message_complete(self) -> None:
        self.messages[-1]["complete"] = True


def parse_responses(wire: bytes, *, eof: bool = True) -> list[dict]:
    """Parse a stream of HTTP/1.1 responses; raises if any byte is not valid HTTP/1.1.

    A close-delimited last body is accepted when `eof` (the codec closes after it).
    """
    proto = _Resp()
    parser = proto.parser = httptools.HttpResponseParser(proto)
    parser.feed_data(wire)
    if proto.messages and not proto.messages[-1]["complete"]:
        last = proto.messages[-1]
        framed = any(n in (b"content-length", b"transfer-encoding") for n, _ in last["headers"])
        if framed or not eof or not last.get("head_done"):
            raise AssertionError(f"incomplete response: {last}")
    return proto.messages
