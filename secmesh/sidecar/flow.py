"""Splicing two transports, with backpressure and half-close in exactly one place.

A `Pipe` is the protocol of one side; `link(a, b)` joins two. Bytes read on one side are
written to the other as they come (no per-byte work, no copies of ours). When the *other*
side's write buffer rises above its high-water mark, its transport calls `pause_writing()`
on its protocol and we stop reading this side; `resume_writing()` (buffer under the low-water
mark) resumes it. So memory per connection is bounded by the two high-water marks.

EOF: between two plain TCP sides a half-close is passed on (`write_eof`) and the connection
ends when both directions are done. A TLS side cannot be half-closed with Python's `ssl`
(uvloop answers a peer's close_notify with its own shutdown, and `write_eof` is not
supported), so an EOF that involves a TLS side closes the other side after flushing what is
already queued.
"""

from __future__ import annotations

import asyncio


class Pipe(asyncio.Protocol):
    """One side of a spliced pair. Subclasses add the set-up stages (handshake, authz, connect)."""

    transport: asyncio.Transport | None
    peer: Pipe | None
    is_tls: bool

    def __init__(self) -> None:
        self.transport = None
        self.peer = None
        self.is_tls = False
        self.nbytes = 0          # bytes read on this side (and written to the peer); the idle sweeper watches it
        self.got_eof = False
        self.closed = False
        self._pending: list[bytes] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # The hot path: one call per read, so kept to a length update and a write.
        peer = self.peer
        if peer is not None:
            self.nbytes += len(data)
            peer.transport.write(data)  # type: ignore[union-attr]
            return
        # Not linked yet: uvloop starts reading right after connection_made even if the
        # protocol paused reading there; keep what arrives (bounded: reading stops at once).
        if self._pending is None:
            self._pending = []
        self._pending.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        t = self.transport
        if not self.is_tls and not peer.is_tls and peer.transport.can_write_eof():
            peer.transport.write_eof()
            if peer.got_eof:
                t.close()  # type: ignore[union-attr]
                peer.transport.close()
            return True
        peer.transport.close()   # flushes what is queued, then closes (close_notify on TLS)
        return False

    def pause_writing(self) -> None:
        """Our transport's buffer is above high water: stop reading the side that feeds it."""
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()
        # Break the a <-> b cycle now: left to the cyclic GC, every finished connection would keep
        # its TLS objects (tens of KB of OpenSSL buffers) alive until a full collection.
        self.peer = None
        self._pending = None

    # -- helpers ---------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


def link(a: Pipe, b: Pipe, *, high_water: int, low_water: int) -> None:
    """Join two connected sides, set their write-buffer marks and start reading both."""
    a.peer, b.peer = b, a
    for side in (a, b):
        side.transport.set_write_buffer_limits(high=high_water, low=low_water)  # type: ignore[union-attr]
    for side in (a, b):
        pending, side._pending = side._pending, None
        if pending:
            for chunk in pending:
                side.data_received(chunk)
    for side in (a, b):
        if not side.closed:
            side.transport.resume_reading()  # type: ignore[union-attr]
