"""What the HTTP/2 codec does per received stream instead of h2's generic Python paths.

1. **One-pass inbound header validation** (`inbound_problem`). h2 validates a received block
   with a chain of seven generators that test every byte of every name and value in a Python
   loop. We switch that off (`validate_inbound_headers=False`) and apply exactly the same rules
   (RFC 9113 §8.2, §8.3; h2 4.4 `h2.utilities.validate_headers`) in one loop whose byte
   checks run in C (regular expressions), remembering fields already found valid: a proxy
   sees the same few fields over and over. The codec calls it for every request, response,
   informational response and trailer block before any event reaches the proxy; a refused
   block ends the connection with GOAWAY(PROTOCOL_ERROR), as h2 did. Same accept set as h2:
   `tests/fuzz/test_http2_inbound_fuzz.py` checks it differentially.

2. **O(1) open-stream counting** (`ReapingH2Connection`). h2 counts open streams, each time
   one begins, by walking `conn.streams` and asking each stream whether it is open; the same
   walk moves closed streams to `_closed_streams` (how late frames on them are judged, RFC
   9113 §5.1). With 100 streams on a connection that walk is O(streams) per stream. We move a
   stream out the moment it closes instead, right after the frame (received or sent) that
   closed it, so `conn.streams` holds only open streams and its length is the count. The
   private h2 names this relies on are pinned by `tests/unit/codec/test_http2_inbound.py`.

3. **Graceful GOAWAY** (`keep_open_on_goaway`), the other h2 behaviour we replace.

4. `request_event`: a checked request block as the proxy's `RequestHeaders`.
"""

from __future__ import annotations

import re
from typing import Any

import h2.events as ev
from h2.connection import ConnectionInputs, H2Connection
from h2.stream import StreamState
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame

from secmesh.sidecar.codec.stream import Headers, RequestHeaders

REQUEST, RESPONSE, TRAILERS = 0, 1, 2

# RFC 9113 §8.2.1: a name has no 0x00-0x20, 0x41-0x5a (upper case), 0x7f-0xff, and no colon
# except the pseudo-header's first byte (whose names are a closed set, checked by equality).
_NAME = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_WS = (0x20, 0x09)
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"])
_SPECIAL = _CONNECTION_SPECIFIC | {b"te", b"host"}
_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path", b":status", b":protocol"])
# Regular (name, value) fields found valid: a pure function of the bytes, so shared by all
# connections. Bounded in count and size; secrets are never kept beyond their request.
_GOOD: set[Any] = set()
_GOOD_MAX = 4096
_MEMO_VALUE_MAX = 128
_NO_MEMO = frozenset([b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"])


def _value_ok(v: bytes) -> bool:
    """RFC 9113 §8.2.1: no NUL, CR or LF anywhere, no SP / HTAB at either end; empty is fine."""
    return not v or (v[0] not in _WS and v[-1] not in _WS
                     and b"\r" not in v and b"\n" not in v and b"\x00" not in v)


def inbound_problem(headers: list, kind: int) -> str | None:  # noqa: C901 - one pass on purpose
    """Why h2's inbound validation would refuse this block, or None if it would accept it.

    `kind` is REQUEST, RESPONSE (informational ones too) or TRAILERS, as h2 decides it from
    the stream's state."""
    pseudo: dict[bytes, bytes] = {}
    host = None
    regular = False
    good = _GOOD
    for h in headers:
        n = h[0]
        if n[:1] == b":":
            if regular:
                return f"pseudo-header field {n[:40]!r} after a regular field"
            if n not in _PSEUDO:
                return f"unknown or malformed pseudo-header field {n[:40]!r}"
            if n in pseudo:
                return f"duplicate {n!r}"
            v = pseudo[n] = h[1]
            if h not in good:
                if not _value_ok(v):
                    return f"illegal value for {n!r}"
                if n != b":path" and len(v) <= _MEMO_VALUE_MAX:   # a path may carry a token
                    if len(good) >= _GOOD_MAX:
                        good.clear()
                    good.add(h)
            continue
        regular = True
        if h in good:
            continue
        v = h[1]
        if not n:
            return "empty field name"
        if _NAME.fullmatch(n) is None:
            return f"illegal field name {n[:40]!r}"
        if not _value_ok(v):
            return f"illegal value for {n[:40]!r}"
        if n in _SPECIAL:
            if n == b"host":
                if kind == REQUEST:
                    if host is not None:
                        return "more than one host field"
                    host = v
                continue                          # never remembered: it is counted
            if n != b"te":
                return f"connection-specific field {n[:40]!r}"
            if v.lower() != b"trailers":
                return f"te other than trailers: {v[:40]!r}"
        if len(v) <= _MEMO_VALUE_MAX and n not in _NO_MEMO and type(h) is not NeverIndexedHeaderTuple:
            if len(good) >= _GOOD_MAX:
                good.clear()
            good.add(h)
    if kind == TRAILERS:
        return "pseudo-header field in trailers" if pseudo else None
    if kind == RESPONSE:
        if b":status" not in pseudo:
            return "response without :status"
        if len(pseudo) > 1:
            return "request pseudo-header field in a response"
        return None
    return _request_problem(pseudo, host)


class Malformed(Exception):
    """A received header block h2 would have refused: the codec ends the connection."""

    def __init__(self, event: Any, problem: str) -> None:
        super().__init__(f"stream {event.stream_id}: malformed header block: {problem}")
        self.event = event

    @classmethod
    def check(cls, event: Any, kind: int) -> None:
        """Raise unless h2 would have accepted the block. One rule more than h2 for responses:
        `:status` is three digits (RFC 9110 §15), which the codec then reads with `int()`."""
        headers = event.headers
        problem = inbound_problem(headers, kind)
        if problem is not None:
            raise cls(event, problem)
        if kind == RESPONSE:
            status = next(v for n, v in headers if n == b":status")
            if len(status) != 3 or not status.isdigit():
                raise cls(event, f"malformed :status {status[:40]!r}")

    def last_stream_id(self, h2_events: list, highest_before: int) -> int:
        """The GOAWAY's last stream as h2 would have sent it, raising at this block: the
        highest stream the peer had opened up to it (h2 has read on since)."""
        last = highest_before
        for e in h2_events:
            if type(e) is ev.RequestReceived and e.stream_id > last:
                last = e.stream_id
            if e is self.event:
                break
        return last


def _request_problem(pseudo: dict[bytes, bytes], host: bytes | None) -> str | None:
    get = pseudo.get
    method = get(b":method")
    path = get(b":path")
    if method is None:
        return "request without :method"
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or path is not None:    # RFC 9113 §8.5
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in pseudo or path is None:      # RFC 9113 §8.3.1; RFC 8441 §4
        return "request without :scheme or :path"
    if b":status" in pseudo:
        return ":status in a request"
    if b":protocol" in pseudo and method != b"CONNECT":
        return ":protocol outside CONNECT"
    authority = get(b":authority")
    if authority is None and host is None:
        return "request without :authority or host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    if path is not None and not path:
        return "empty :path"
    return None


def request_event(sid: int, raw: list, end: bool) -> RequestHeaders:
    """The proxy's view of a checked request block: pseudo-fields pulled out, `:authority` or
    else `host`, cookie crumbs joined (RFC 9113 §8.2.3) into one never-indexed field."""
    method = scheme = authority = path = b""
    host = b""
    headers: Headers = []
    cookies: list[bytes] = []
    for h in raw:
        n, v = h
        if n[:1] == b":":
            if n == b":method":
                method = v
            elif n == b":path":
                path = v
            elif n == b":authority":
                authority = v
            elif n == b":scheme":
                scheme = v
        elif n == b"host":
            host = v
        elif n == b"cookie":
            cookies.append(v)
        else:
            headers.append(h)
    if cookies:                               # RFC 9113 §8.2.3: crumbs joined, kept unindexed
        headers.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    return RequestHeaders(sid, method, authority or host, path, scheme, headers, end, b"2")


_CLOSED = StreamState.CLOSED


class ReapingH2Connection(H2Connection):
    """`H2Connection` whose `streams` holds only streams that are not closed.

    Every stream of ours has an odd id (clients open them; push is off both ways), so the open
    count h2 asks for before each new stream is `len(self.streams)` for odd ids and 0 for even
    ones. A stream is moved to `_closed_streams` (with how it closed, as h2's own sweep does)
    right after the received frame or the local send that closed it."""

    def _open_streams(self, remainder: int) -> int:
        return len(self.streams) if remainder == 1 else 0

    def _reap(self, stream_id: int) -> None:
        s = self.streams.get(stream_id)
        if s is not None and s.state_machine.state is _CLOSED:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = s.closed_by

    def _receive_frame(self, frame: Any) -> list:
        events = super()._receive_frame(frame)
        sid = frame.stream_id
        if sid:
            s = self.streams.get(sid)
            if s is not None and s.state_machine.state is _CLOSED:
                del self.streams[sid]
                self._closed_streams[sid] = s.closed_by
        return events

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False,
                     priority_weight: int | None = None, priority_depends_on: int | None = None,
                     priority_exclusive: bool | None = None) -> None:
        try:
            super().send_headers(stream_id, headers, end_stream, priority_weight,
                                 priority_depends_on, priority_exclusive)
        except Exception:
            s = self.streams.get(stream_id)      # a stream created but never opened: not ours
            if s is not None and s.state_machine.state is StreamState.IDLE:
                del self.streams[stream_id]
            raise
        if end_stream:
            self._reap(stream_id)

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False,
                  pad_length: Any = None) -> None:
        super().send_data(stream_id, data, end_stream, pad_length)
        if end_stream:
            self._reap(stream_id)

    def end_stream(self, stream_id: int) -> None:
        super().end_stream(stream_id)
        self._reap(stream_id)

    def reset_stream(self, stream_id: int, error_code: Any = 0) -> None:
        super().reset_stream(stream_id, error_code)
        self._reap(stream_id)


def keep_open_on_goaway(conn: H2Connection) -> None:
    """Make a graceful GOAWAY leave the connection usable for the streams below it.

    h2 moves to CLOSED on any GOAWAY (later frames in the same read then raise) and discards
    its unsent output (DATA whose window is already spent). RFC 9113 §6.8 says the streams up
    to `last_stream_id` complete, so we swap in a handler that only reports the GOAWAY, and
    still closes h2 for an error GOAWAY. Pinned by test_graceful_goaway_lets_open_streams_finish.
    """
    def receive_goaway(frame: GoAwayFrame) -> tuple[list, list]:
        if frame.error_code:
            conn.state_machine.process_input(ConnectionInputs.RECV_GOAWAY)
        e = ev.ConnectionTerminated()
        e.error_code, e.last_stream_id = frame.error_code, frame.last_stream_id
        e.additional_data = frame.additional_data or None
        return [], [e]

    conn._frame_dispatch_table[GoAwayFrame] = receive_goaway  # noqa: SLF001 - see docstring
