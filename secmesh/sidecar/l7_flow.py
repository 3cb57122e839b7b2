"""Backpressure for the L7 path, in one place: one `CodecSide` per connection (downstream or upstream).

A request or response body moves from a *source* side to a *sink* side one `Data` event at a
time. After each forward the exchange asks the sink `congested(sid)`: its transport is above
its high-water mark, or (HTTP/2) the peer's flow-control window holds our bytes back. If so,
the source is held; otherwise the bytes are `consumed` at once:

- HTTP/2 source: consuming = `acknowledge_received` (a WINDOW_UPDATE); holding = not
  acknowledging yet, so the peer's own window stops it and memory per stream stays bounded by
  the window we advertised, without stopping the other streams of the connection;
- HTTP/1.1 source: consuming is free; holding = pausing the transport (one exchange at a time).

When the sink drains (`resume_writing`, or `StreamWritable` for one h2 stream) the waiting
exchanges `release` their sources. Writes are batched: a side marks itself dirty and every
entry point (a read, a timer, a finished connect) ends with `Flusher.flush()`, so all the
events one read produced go out in one `transport.write` per connection.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Flusher:
    """The worker's set of sides with bytes queued in their codec."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty: list[CodecSide] = []

    def flush(self) -> None:
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for side in dirty:
                side.flush_now()
            dirty = self.dirty


class CodecSide:
    """Codec + transport glue shared by the downstream session and upstream connections."""

    multiplexed = False

    def __init__(self, flusher: Flusher) -> None:
        self.flusher = flusher
        self.transport: asyncio.Transport | None = None
        self.codec: Any = None
        self.write_paused = False
        self.closed = False
        self._dirty = False
        self.bytes_out = 0
        self._held: dict[int, int] = {}
        self._reading_paused = False

    # --- output --------------------------------------------------------------------------

    def mark(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.flusher.dirty.append(self)

    def flush_now(self) -> None:
        self._dirty = False
        codec, t = self.codec, self.transport
        if codec is None or t is None or self.closed:
            return
        out = codec.data_to_send()
        if out:
            self.bytes_out += len(out)
            t.write(out)
        if codec.should_close:
            self.closed = True
            t.close()

    # --- backpressure ----------------------------------------------------------------------

    def congested(self, sid: int) -> bool:
        if self.write_paused:
            return True
        return self.multiplexed and self.codec.buffered(sid) > 0

    def consumed(self, sid: int, n: int) -> None:
        if self.multiplexed and n:
            self.codec.acknowledge_received(sid, n)
            self.mark()

    def hold(self, sid: int, n: int) -> None:
        self._held[sid] = self._held.get(sid, 0) + n
        if not self.multiplexed:
            self.update_reading()

    def release(self, sid: int) -> None:
        n = self._held.pop(sid, None)
        if n is None:
            return
        if self.multiplexed:
            if n:
                self.codec.acknowledge_received(sid, n)
                self.mark()
        else:
            self.update_reading()

    def forget(self, sid: int) -> None:
        """The stream is over: whatever it held no longer holds the connection."""
        if self._held.pop(sid, None) is not None and not self.multiplexed:
            self.update_reading()

    def update_reading(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        codec = self.codec
        pause = (not self.multiplexed and bool(self._held)) or (codec is not None and codec.wants_pause)
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                t.pause_reading()
            else:
                t.resume_reading()
