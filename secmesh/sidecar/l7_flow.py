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
from collections import deque
from typing import Any, Callable


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
    stop_reading_when_full = False      # downstream h2: see `HttpSession.pause_writing`

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
        pause = ((not self.multiplexed and bool(self._held)) or (codec is not None and codec.wants_pause)
                 or (self.write_paused and self.stop_reading_when_full))
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                t.pause_reading()
            else:
                t.resume_reading()


class Deadline:
    """One request's timeout in a `Deadlines` queue; `cancel()` as a TimerHandle's."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        self.fn = None


class Deadlines:
    """Request timeouts without one event-loop timer per request.

    A listener's requests mostly share a few timeout values (the route's or cluster's), so per
    value the deadlines come in order: a FIFO per value and one loop timer at its head's
    deadline. Adding is an append (finished entries at the head are dropped then); cancelling
    clears the entry. Per-request values (a gRPC deadline) belong on `loop.call_later`.
    """

    __slots__ = ("loop", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queues: dict[float, _DeadlineQueue] = {}

    def add(self, timeout: float, fn: Callable[[], None]) -> Deadline:
        q = self._queues.get(timeout)
        if q is None:
            q = self._queues[timeout] = _DeadlineQueue(self.loop, timeout)
        return q.add(fn)


class _DeadlineQueue:
    __slots__ = ("loop", "timeout", "items", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.items: deque[tuple[float, Deadline]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, fn: Callable[[], None]) -> Deadline:
        d = Deadline(fn)
        items = self.items
        while items and items[0][1].fn is None:
            items.popleft()
        items.append((self.loop.time() + self.timeout, d))
        if self.timer is None:
            self.timer = self.loop.call_at(items[0][0], self._fire)
        return d

    def _fire(self) -> None:
        self.timer = None
        items = self.items
        now = self.loop.time()
        try:
            while items:
                at, d = items[0]
                fn = d.fn
                if fn is not None:
                    if at > now:
                        break
                    d.fn = None
                items.popleft()
                if fn is not None:
                    fn()
        finally:                         # (a failing callback must not strand the ones behind it)
            if items and self.timer is None:
                self.timer = self.loop.call_at(items[0][0], self._fire)
