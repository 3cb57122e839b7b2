"""Outbound HTTP/2 DATA that never overruns the peer's flow-control windows.

h2 raises if asked to send more than the window; a proxy must instead hold the excess and stop
reading its source. Each stream's excess waits here (no copies: memoryview slices) until a
WINDOW_UPDATE or a SETTINGS change opens the window; `window_opened` then reports the streams
whose buffer drained, which the codec turns into `StreamWritable` events. Trailers queued
behind data go out right after its last byte.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from h2.connection import H2Connection
from h2.exceptions import StreamClosedError

from secmesh.sidecar.codec.stream import Headers


class _Pending:
    __slots__ = ("chunks", "size", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0
        self.end = False
        self.trailers: Headers | None = None


class SendQueue:
    def __init__(self, conn: H2Connection, *, on_end: Callable[[int], None],
                 on_gone: Callable[[int], None], send_trailers: Callable[[int, Headers], None]) -> None:
        self._h2 = conn
        self._on_end = on_end                 # we sent END_STREAM on the stream
        self._on_gone = on_gone               # the stream was closed under us
        self._send_trailers = send_trailers
        self._pending: dict[int, _Pending] = {}

    def buffered(self, sid: int) -> int:
        p = self._pending.get(sid)
        return p.size if p is not None else 0

    def __contains__(self, sid: int) -> bool:
        return sid in self._pending

    def drop(self, sid: int) -> None:
        self._pending.pop(sid, None)

    def data(self, sid: int, data: bytes | memoryview, end: bool) -> None:
        p = self._pending.get(sid)
        if p is None:                          # fast path: it fits, nothing queued before it
            h2, n = self._h2, len(data)
            try:
                if n <= h2.max_outbound_frame_size and n <= h2.local_flow_control_window(sid):
                    h2.send_data(sid, data, end_stream=end)
                    if end:
                        self._on_end(sid)
                    return
            except StreamClosedError:
                self._on_gone(sid)
                return
            p = self._pending[sid] = _Pending()
        if data:
            p.chunks.append(data)
            p.size += len(data)
        p.end = p.end or end
        self._flush(sid, p)

    def trailers(self, sid: int, headers: Headers) -> bool:
        """Queue trailers behind buffered data; False if nothing is buffered (send them now)."""
        p = self._pending.get(sid)
        if p is None:
            return False
        p.trailers = headers
        self._flush(sid, p)
        return True

    def window_opened(self, sid: int) -> list[int]:
        """A window grew (`sid` 0: the connection's); send what fits; return drained streams."""
        targets = list(self._pending) if sid == 0 else ([sid] if sid in self._pending else [])
        return [s for s in targets if s in self._pending and self._flush(s, self._pending[s])]

    def _flush(self, sid: int, p: _Pending) -> bool:
        """Send what the windows allow; True when the buffer is empty (and gone)."""
        h2 = self._h2
        try:
            while p.chunks:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    return False
                c = p.chunks[0]
                if len(c) <= window:
                    p.chunks.popleft()
                else:
                    p.chunks[0] = memoryview(c)[window:]
                    c = memoryview(c)[:window]
                p.size -= len(c)
                last = not p.chunks and p.end and p.trailers is None
                h2.send_data(sid, c, end_stream=last)
                if last:
                    del self._pending[sid]
                    self._on_end(sid)
                    return True
            del self._pending[sid]
            if p.trailers is not None:
                self._send_trailers(sid, p.trailers)
            elif p.end:
                h2.end_stream(sid)
                self._on_end(sid)
        except StreamClosedError:
            self._pending.pop(sid, None)
            self._on_gone(sid)
        return True
