"""The HTTP/2 connection both codec roles share: h2 events → the stream model, sans-I/O.

What this adds to h2:
- **Flow control end to end.** Received DATA is never acknowledged for the consumer: the
  proxy calls `acknowledge_received(stream_id, n)` once it has passed `n` bytes on, so a slow
  reader holds the writer back and memory stays bounded by the windows. Padding, and bytes of
  streams that were reset or already answered, are handed back here. Outbound, see
  `http2_send.py` (never overrun the peer's window; `StreamWritable` when a buffer drains).
- **Soft limits as stream errors.** `max_concurrent_streams` and the header-list size are
  advertised as configured, while h2 itself enforces twice that as a hard stop; over the soft
  limit a stream is refused (REFUSED_STREAM, retryable) or answered 431, not the connection.
- **Graceful GOAWAY** (`keep_open_on_goaway` in `http2_inbound.py`): streams below `last_stream_id` finish.
- **Rapid reset** (`http2_guard.py`): GOAWAY(ENHANCE_YOUR_CALM) and a `ConnectionError`.
- **Less Python per stream**: header blocks are made valid (outbound, `http2_headers.py`) and
  checked (inbound, `http2_inbound.py`: h2's rules, one pass, before any event surfaces) by us
  instead of h2's generator chains; h2 no longer walks every stream to count the open ones
  (`ReapingH2Connection`); HPACK coding is memoized while the dynamic table is unchanged
  (`http2_hpack.py`).
  WINDOW_UPDATEs need no batching here: h2's window manager already sends one only when half
  a window has been consumed (nghttp2's rule), however often we acknowledge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import h2.events as ev
from h2.config import H2Configuration
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, SettingsFrame

from secmesh.sidecar.codec.http2_guard import RapidResetGuard, ResetLimits
from secmesh.sidecar.codec.http2_headers import outbound_fields
from secmesh.sidecar.codec.http2_hpack import MemoDecoder, MemoEncoder
from secmesh.sidecar.codec.http2_inbound import (
    REQUEST, RESPONSE, TRAILERS, Malformed, ReapingH2Connection, keep_open_on_goaway, request_event,
)
from secmesh.sidecar.codec.http2_send import SendQueue
from secmesh.sidecar.codec.stream import (
    CodecUsageError, ConnectionError, Data, ErrorCode, Event, GoAway, Headers, InformationalResponse,
    Reason, ResponseHeaders, StreamReset, StreamWritable, Trailers,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STATUS_BYTES = {code: str(code).encode() for code in range(100, 600)}
_REMOTE_END, _LOCAL_END = 1, 2


@dataclass(frozen=True, slots=True)
class H2Settings:
    max_concurrent_streams: int = 100
    initial_window_size: int = 1 << 20        # per stream
    connection_window: int = 4 << 20
    max_frame_size: int = 16384
    max_header_list_size: int = 64 * 1024
    resets: ResetLimits = ResetLimits()


class H2Codec:
    protocol = "http2"
    _client_side = False

    def __init__(self, settings: H2Settings = H2Settings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = s = settings
        conn = self._h2 = ReapingH2Connection(H2Configuration(
            client_side=self._client_side, header_encoding=None,
            # Ours: `outbound_fields` does the same work in one pass (http2_headers.py).
            validate_outbound_headers=False, normalize_outbound_headers=False,
            # The peer's: always validated (RFC 9113 §8.2), by `inbound_problem` in one pass.
            # Cookie crumbs are joined where it matters (`request_event`; `h2_to_h1`).
            validate_inbound_headers=False, normalize_inbound_headers=False))
        conn.encoder, conn.decoder = MemoEncoder(), MemoDecoder()   # see http2_hpack.py
        hard = {SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams * 2,
                SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size * 2,
                SettingCodes.INITIAL_WINDOW_SIZE: s.initial_window_size,
                SettingCodes.MAX_FRAME_SIZE: s.max_frame_size}
        if self._client_side:
            hard[SettingCodes.ENABLE_PUSH] = 0
        conn.local_settings = Settings(client=self._client_side, initial_values=hard)
        conn.decoder.max_header_list_size = s.max_header_list_size * 2
        conn.max_inbound_frame_size = s.max_frame_size
        keep_open_on_goaway(conn)
        conn.initiate_connection()
        conn.data_to_send()                     # replaced by our SETTINGS with the soft values
        advertised = SettingsFrame(0)
        advertised.settings = dict(hard)
        advertised.settings[SettingCodes.MAX_CONCURRENT_STREAMS] = s.max_concurrent_streams
        advertised.settings[SettingCodes.MAX_HEADER_LIST_SIZE] = s.max_header_list_size
        self._out: list[bytes] = [PREFACE if self._client_side else b"", advertised.serialize()]
        if s.connection_window > 65535:
            conn.increment_flow_control_window(s.connection_window - 65535)
        self._guard = RapidResetGuard(s.resets, clock)
        self._open: dict[int, int] = {}         # stream id → _REMOTE_END | _LOCAL_END bits
        self._ignored: set[int] = set()
        self._unacked: dict[int, int] = {}
        self._send = SendQueue(conn, on_end=self._local_end, on_gone=self._forget,
                               send_trailers=lambda sid, h: self._send_headers(sid, h, True))
        self._fatal = False
        self.control_replies = 0                # PING / SETTINGS the peer made h2 acknowledge
        self._draining = False
        self._goaway_last: int | None = None     # from the peer
        self._ready: list[Event] = []

    # === state the I/O shell reads ===

    @property
    def should_close(self) -> bool:
        return self._fatal or ((self._draining or self._goaway_last is not None) and not self._open)

    @property
    def wants_pause(self) -> bool:
        return self._fatal

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def buffered(self, stream_id: int) -> int:
        """Bytes accepted by send_data but held back by the peer's flow-control window."""
        return self._send.buffered(stream_id)

    # === input ===

    def receive(self, data: bytes) -> list[Event]:
        if self._fatal or not data:
            return self.ready_events()
        highest = self._h2.highest_inbound_stream_id
        try:
            h2_events = self._h2.receive_data(data)
        except H2ProtocolError as exc:
            self._die(int(getattr(exc, "error_code", ErrorCode.PROTOCOL_ERROR)),
                      Reason.PROTOCOL_ERROR, str(exc))
            return self.ready_events()
        out = self._ready
        mark = len(out)
        opened: set[int] = set()
        dropped: set[int] = set()
        try:
            for e in h2_events:
                if self._fatal:
                    break
                self._dispatch(e, out, opened, dropped)
        except Malformed as bad:                 # as when h2 raised: nothing of this read surfaces
            del out[mark:]
            self._die(ErrorCode.PROTOCOL_ERROR, Reason.PROTOCOL_ERROR, str(bad),
                      bad.last_stream_id(h2_events, highest))
            return self.ready_events()
        if dropped:                              # opened and cancelled in one read: never surface
            self._ready = [e for e in out if getattr(e, "stream_id", None) not in dropped]
        return self.ready_events()

    def receive_eof(self) -> list[Event]:
        for sid in list(self._open):
            self._ready.append(StreamReset(sid, ErrorCode.CANCEL, True, Reason.EOF))
            self._forget(sid)
        self._fatal = True
        return self.ready_events()

    def ready_events(self) -> list[Event]:
        ready = self._ready
        self._ready = []
        return ready

    def _dispatch(self, e: ev.Event, out: list[Event], opened: set[int], dropped: set[int]) -> None:
        t = type(e)
        if t is ev.DataReceived:
            sid, data = e.stream_id, e.data
            n, end = len(data), e.stream_ended is not None
            if e.flow_controlled_length > n:      # padding: nobody consumes it
                self._h2.acknowledge_received_data(e.flow_controlled_length - n, sid)
            state = self._open.get(sid)
            consumer = state is not None and sid not in self._ignored
            if consumer and not (state & _LOCAL_END and not self._client_side):
                self._unacked[sid] = self._unacked.get(sid, 0) + n
            elif n:                               # answered already / ignored: give it back now
                self._h2.acknowledge_received_data(n, sid)
            if consumer:
                out.append(Data(sid, data, end))
            if end:
                self._remote_end(sid)
        elif t is ev.RequestReceived or t is ev.ResponseReceived or t is ev.TrailersReceived:
            self._on_headers(e, out, opened)
        elif t is ev.InformationalResponseReceived:
            Malformed.check(e, RESPONSE)
            status = next((int(v) for n, v in e.headers if n == b":status"), 100)
            out.append(InformationalResponse(e.stream_id, status, [h for h in e.headers if h[0][:1] != b":"]))
        elif t is ev.StreamEnded:
            sid = e.stream_id
            if sid in self._open and not self._open[sid] & _REMOTE_END:
                if sid not in self._ignored:
                    out.append(Data(sid, b"", True))
                self._remote_end(sid)
        elif t is ev.StreamReset:
            self._on_reset(e, out, opened, dropped)
        elif t is ev.WindowUpdated:
            self._window_opened(e.stream_id, out)
        elif t is ev.PingReceived:
            self.control_replies += 1            # h2 queued the ACK (flood guard: `http_proxy`)
        elif t is ev.RemoteSettingsChanged:
            self.control_replies += 1            # … and the SETTINGS ACK
            if SettingCodes.INITIAL_WINDOW_SIZE in e.changed_settings:
                self._window_opened(0, out)
        elif t is ev.ConnectionTerminated:
            self._on_goaway(e, out)

    def _on_headers(self, e: ev.Event, out: list[Event], opened: set[int]) -> None:
        sid, end = e.stream_id, e.stream_ended is not None
        t = type(e)
        Malformed.check(e, REQUEST if t is ev.RequestReceived else
                        TRAILERS if t is ev.TrailersReceived else RESPONSE)
        if t is ev.TrailersReceived:
            if sid not in self._ignored and sid in self._open:
                out.append(Trailers(sid, list(e.headers)))
            self._remote_end(sid)
            return
        if t is ev.RequestReceived:
            if not self._accept_stream(sid, e.headers, end, out):
                return
            opened.add(sid)
            out.append(request_event(sid, e.headers, end))
        else:
            status, headers = 0, []
            for h in e.headers:                   # the peer's tuples: never-indexed flags kept
                if h[0] == b":status":
                    status = int(h[1])
                else:
                    headers.append(h)
            out.append(ResponseHeaders(sid, status, headers, end))
        if end:
            self._remote_end(sid)

    def _accept_stream(self, sid: int, headers: list, end: bool, out: list[Event]) -> bool:
        raise NotImplementedError

    def _on_reset(self, e: ev.StreamReset, out: list[Event], opened: set[int], dropped: set[int]) -> None:
        sid = e.stream_id
        state = self._open.get(sid)
        if state is None and sid not in self._ignored:
            return
        # Premature: before our response ended, whether the client sent RST_STREAM or made h2
        # reset the stream with a stream error (MadeYouReset, CVE-2025-8671: same effect).
        if not self._client_side and state is not None and not state & _LOCAL_END:
            if self._guard.premature_reset():
                self._die(ErrorCode.ENHANCE_YOUR_CALM, Reason.RAPID_RESET,
                          "too many streams reset before their response")
                return
            if sid in opened:
                dropped.add(sid)
        if sid not in self._ignored:
            out.append(StreamReset(sid, int(e.error_code), e.remote_reset))
        self._forget(sid)

    def _on_goaway(self, e: ev.ConnectionTerminated, out: list[Event]) -> None:
        out.append(GoAway(e.last_stream_id or 0, int(e.error_code)))
        if e.error_code != ErrorCode.NO_ERROR:
            for sid in list(self._open):
                out.append(StreamReset(sid, int(e.error_code), True, Reason.PEER_GOAWAY))
                self._forget(sid)
            self._fatal = True
            out.append(ConnectionError(Reason.PEER_GOAWAY, None, f"GOAWAY {int(e.error_code)}"))
            return
        self._goaway_last = last = e.last_stream_id or 0
        if self._client_side:                    # ours above `last` were never seen: retryable
            for sid in [s for s in self._open if s > last]:
                out.append(StreamReset(sid, ErrorCode.REFUSED_STREAM, True, Reason.PEER_GOAWAY))
                self._forget(sid)

    # === stream bookkeeping ===

    def _remote_end(self, sid: int) -> None:
        state = self._open.get(sid)
        if state is not None:
            self._settle(sid, state | _REMOTE_END)

    def _local_end(self, sid: int) -> None:
        state = self._open.get(sid)
        if state is not None:
            self._settle(sid, state | _LOCAL_END)

    def _settle(self, sid: int, state: int) -> None:
        if state == _REMOTE_END | _LOCAL_END:
            self._forget(sid)
        else:
            self._open[sid] = state

    def _forget(self, sid: int) -> None:
        """The stream is over: return whatever window the consumer still holds, drop buffers."""
        self._open.pop(sid, None)
        self._ignored.discard(sid)
        self._send.drop(sid)
        left = self._unacked.pop(sid, 0)
        if left and not self._fatal:
            self._h2.acknowledge_received_data(left, sid)

    def _window_opened(self, sid: int, out: list[Event]) -> None:
        for s in self._send.window_opened(sid):
            if s in self._open:
                out.append(StreamWritable(s))

    def cut(self, reason: str, detail: str) -> None:
        """The proxy gives up on the peer (it floods us with frames to answer and reads nothing)."""
        self._die(ErrorCode.ENHANCE_YOUR_CALM, reason, detail)

    def _die(self, code: int, reason: str, detail: str, last_stream_id: int | None = None) -> None:
        self._fatal = True
        try:
            self._h2.close_connection(error_code=code, last_stream_id=last_stream_id)
        except H2ProtocolError:
            pass
        self._ready.append(ConnectionError(reason, None, detail))

    # === output ===

    def data_to_send(self) -> bytes:
        self._out.append(self._h2.data_to_send())
        out, self._out = self._out, []
        return b"".join(out)

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        held = self._unacked.get(stream_id, 0)
        n = min(n, held)
        if n <= 0 or self._fatal:
            return
        self._unacked[stream_id] = held - n
        self._h2.acknowledge_received_data(n, stream_id)

    def _send_headers(self, sid: int, headers: Headers, end: bool) -> None:
        if self._fatal or sid not in self._open:
            return                                # reset meanwhile: nothing to answer
        try:
            self._h2.send_headers(sid, headers, end_stream=end)
        except StreamClosedError:
            self._forget(sid)
            return
        except H2ProtocolError as exc:
            raise CodecUsageError(f"stream {sid}: {exc}") from exc
        if end:
            self._local_end(sid)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        if not self._fatal and stream_id in self._open:
            self._send.data(stream_id, data, end_stream)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self._fatal or stream_id not in self._open:
            return
        headers = outbound_fields(headers, [])
        if not self._send.trailers(stream_id, headers):
            self._send_headers(stream_id, headers, True)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        if self._fatal or stream_id not in self._open:
            return
        try:
            self._h2.reset_stream(stream_id, error_code)
        except StreamClosedError:
            pass
        self._forget(stream_id)

    def _goaway(self, last_stream_id: int, code: int = ErrorCode.NO_ERROR) -> None:
        """Send GOAWAY without telling h2, which would otherwise stop all streams at once."""
        self._out.append(self._h2.data_to_send())
        self._out.append(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize())

    def close(self) -> None:
        if not self._fatal:
            try:
                self._h2.close_connection()
            except H2ProtocolError:
                pass
        self._fatal = True


