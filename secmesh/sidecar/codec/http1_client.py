"""HTTP/1.1 client codec (upstream side) on httptools' response parser, sans-I/O.

One request in flight at a time (pools keep connections, not pipelines: a pipelined request
cannot be retried safely). What llhttp cannot know without the request — that a response to
HEAD has no body, that a 2xx to CONNECT opens a tunnel — is handled by feeding llhttp only the
response head (found with one `find(b"\\r\\n\\r\\n")`; llhttp refuses bare LF, so that is the
exact boundary) and starting a fresh parser after it. A body delimited by close ends at EOF,
which httptools cannot be told about, so `receive_eof` ends it here.
"""

from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from secmesh.sidecar.codec.headers import HOP_BY_HOP
from secmesh.sidecar.codec.http1_wire import (
    CRLF, DEFAULT_LIMITS, LAST_CHUNK, NO_BODY_STATUSES, H1Limits, append_headers, chunk, trailer_block,
)
from secmesh.sidecar.codec.stream import (
    CodecUsageError, ConnectionError, Data, ErrorCode, Event, Headers, InformationalResponse, Reason,
    ResponseHeaders, StreamReset, Trailers, Upgrade,
)

_NONE, _LENGTH, _CHUNKED = 0, 1, 2
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close"))   # `Connection` values that name no other field


class _Abort(Exception):
    pass


class _Req:
    __slots__ = ("sid", "method", "upgrade", "head_only")

    def __init__(self, sid: int, method: bytes, upgrade: bytes) -> None:
        self.sid, self.method, self.upgrade = sid, method, upgrade
        self.head_only = method in (b"HEAD", b"CONNECT")


class H1ClientCodec:
    """One upstream HTTP/1.1 connection; stream ids 1, 2, 3… per request."""

    protocol = "http1"

    def __init__(self, *, limits: H1Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._parser = HttpResponseParser(self)
        self._out: list[bytes] = []
        self._ready: list[Event] = []
        self._req: _Req | None = None          # awaiting (the rest of) its response
        self._next_id = 1
        self._send_sid = 0                      # request whose body we are writing
        self._send_mode = _NONE
        self._hbuf = bytearray()
        self._in_message = False
        self._in_head = False
        self._tunnel: int | None = None
        self._should_close = False
        self._draining = False
        self._dead = False
        self._reset_message()

    @property
    def should_close(self) -> bool:
        return self._should_close

    @property
    def wants_pause(self) -> bool:
        return False

    @property
    def can_open_stream(self) -> bool:
        return (self._req is None and self._send_sid == 0 and self._tunnel is None
                and not (self._should_close or self._draining or self._dead))

    # === output ===

    def send_request(self, method: bytes, authority: bytes, path: bytes, scheme: bytes,
                     headers: Headers, end_stream: bool = False, *, upgrade: bytes = b"") -> int:
        """Write a request head. `upgrade` (e.g. b"websocket") asks the app to switch protocols."""
        if not self.can_open_stream:
            raise CodecUsageError("connection busy or closing")
        sid = self._next_id
        self._next_id += 1
        target = authority if method == b"CONNECT" else path
        out = self._out
        out += (method, b" ", target, b" HTTP/1.1\r\nhost: ", authority, CRLF)
        length = append_headers(out, headers)
        if upgrade:
            out += (b"connection: upgrade\r\nupgrade: ", upgrade, CRLF)
        if length is not None:
            mode = _LENGTH
        elif end_stream or method == b"CONNECT" or upgrade:
            if end_stream and method in _BODY_METHODS:
                out.append(b"content-length: 0\r\n")
            mode = _NONE
        else:
            out.append(b"transfer-encoding: chunked\r\n")
            mode = _CHUNKED
        out.append(CRLF)
        self._req = _Req(sid, method, upgrade)
        self._send_sid = 0 if end_stream else sid
        self._send_mode = mode
        return sid

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        if self._tunnel is not None:
            if data:
                self._out.append(data)
            if end_stream:
                self._should_close = True
            return
        if stream_id != self._send_sid:
            if self._dead or self._should_close:
                return
            raise CodecUsageError(f"stream {stream_id} is not sending a body")
        if data:
            if self._send_mode == _CHUNKED:
                chunk(self._out, data)
            else:
                self._out.append(data)
        if end_stream:
            if self._send_mode == _CHUNKED:
                self._out.append(LAST_CHUNK)
            self._send_sid = 0

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if stream_id != self._send_sid:
            return
        if self._send_mode == _CHUNKED:
            trailer_block(self._out, headers)
        self._send_sid = 0

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        return b"".join(out)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        self._dead = self._should_close = True

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        """No-op: HTTP/1.1 backpressure is pausing the transport."""

    def start_drain(self) -> None:
        self._draining = True
        if self._req is None and self._send_sid == 0:
            self._should_close = True

    def close(self) -> None:
        self._dead = self._should_close = True

    # === input ===

    def ready_events(self) -> list[Event]:
        ready = self._ready
        self._ready = []
        return ready

    def receive(self, data: bytes) -> list[Event]:
        if self._tunnel is not None:
            return [Data(self._tunnel, data)] if data else []
        if data and not self._dead:
            self._feed(data)
        return self.ready_events()

    def receive_eof(self) -> list[Event]:
        if self._tunnel is not None:
            self._should_close = True
            return [Data(self._tunnel, b"", True)]
        req = self._req
        if req is not None and not self._dead:
            if self._in_message and not self._in_head and self._until_close:
                self._message_done()                 # a close-delimited body ends here
            else:
                self._ready.append(StreamReset(req.sid, ErrorCode.CONNECT_ERROR, True, Reason.EOF))
        self._dead = self._should_close = True
        return self.ready_events()

    def _feed(self, data: bytes | memoryview) -> None:
        while data and not self._dead:
            req = self._req
            if req is None:                          # bytes nobody asked for: not reusable
                self._dead = self._should_close = True
                return
            if req.head_only and not self._in_message:
                data = self._feed_head_only(data)
                continue
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as exc:
                rest = memoryview(data)[exc.args[0]:]
                if self._tunnel is not None and len(rest):
                    self._ready.append(Data(self._tunnel, bytes(rest)))
                return
            except HttpParserError as exc:
                cause = exc.__context__
                if cause is not None and not isinstance(cause, _Abort):
                    raise cause
                if not self._dead:
                    self._fail(Reason.UPSTREAM_PROTOCOL_ERROR, str(exc))
                return
            if self._in_head and not self._dead:     # a head split over reads: bound what it holds
                raw, limits = self._raw, self._limits
                if len(raw) > limits.max_headers or sum(
                        len(n) + len(v) + 4 for n, v in raw) > limits.max_header_bytes:
                    self._fail(Reason.HEADERS_TOO_LARGE, "response head over the limits")
                    return
            self._flush_held()
            return

    def _feed_head_only(self, data: bytes | memoryview) -> bytes:
        """Feed llhttp exactly one response head; return the bytes after it."""
        buf = self._hbuf
        start = max(0, len(buf) - 3)
        buf += data
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) > self._limits.max_header_bytes:
                self._fail(Reason.HEADERS_TOO_LARGE, "response head too large")
            return b""
        head, rest = bytes(buf[:end + 4]), bytes(buf[end + 4:])
        self._hbuf = bytearray()
        try:
            self._parser.feed_data(head)
        except HttpParserError as exc:
            if not self._dead:
                self._fail(Reason.UPSTREAM_PROTOCOL_ERROR, str(exc))
            return b""
        if self._in_message and self._headers_done and self._head_end:
            keep = self._parser.should_keep_alive()   # conservative: False if llhttp wants EOF
            self._parser = HttpResponseParser(self)   # llhttp would wait for a body: start over
            self._message_done()
            if not keep:
                self._should_close = True
        if self._tunnel is not None:
            if rest:
                self._ready.append(Data(self._tunnel, rest))
            return b""
        return rest

    # === llhttp callbacks ===

    def _reset_message(self) -> None:
        self._raw: Headers = []
        self._hop_free = False
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._n_fields = 0
        self._head_bytes = 0
        self._held: bytes | None = None
        self._status = 0
        self._headers_done = False
        self._head_end = False
        self._until_close = False
        self._chunked = False
        self._cl: bytes | None = None

    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_message = self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        """One call per field from llhttp: only collect here (the hot path); the head's fields are
        lowered, classified and counted once in `on_headers_complete`, trailers right away."""
        if self._in_head:
            self._raw.append((name, value))
            return
        self._n_fields += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._n_fields > self._limits.max_headers or self._head_bytes > self._limits.max_header_bytes:
            self._fail(Reason.HEADERS_TOO_LARGE, "response trailers over the limits")
            raise _Abort
        if self._trailers is None:
            self._trailers = []
        self._trailers.append((name.lower(), value))

    def _head_fields(self) -> bool:
        """The collected head fields → `_headers` (names lowered, hop-by-hop fields dropped unless a
        `Connection` names others, for `forward_response_headers` to judge); False if over the limits."""
        raw, self._raw = self._raw, []
        limits = self._limits
        if len(raw) > limits.max_headers:
            return False
        size = 0
        headers = self._headers
        hop_free = True
        for name, value in raw:
            size += len(name) + len(value) + 4
            name = name.lower()
            if name in HOP_BY_HOP:                   # never forwarded: dropped here already
                if name == b"transfer-encoding":
                    self._chunked = value.rstrip().lower().endswith(b"chunked")   # framing
                elif name == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                    hop_free = False                 # it names other fields: the proxy strips those
                    headers.append((name, value))
                continue
            if name == b"content-length" and self._cl is None:
                self._cl = value                     # the first one, as the header scan did
            headers.append((name, value))
        if size > limits.max_header_bytes:
            return False
        self._hop_free = hop_free
        return True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._headers_done = True
        if not self._head_fields():
            self._fail(Reason.HEADERS_TOO_LARGE, "response head over the limits")
            raise _Abort
        req = self._req
        assert req is not None
        status = self._status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return                                   # emitted at message complete (no body)
        sid = req.sid
        if status == 101 or (req.method == b"CONNECT" and status < 300):
            if status == 101 and not req.upgrade:
                self._fail(Reason.UPSTREAM_PROTOCOL_ERROR, "101 without an upgrade request")
                raise _Abort
            self._ready.append(ResponseHeaders(sid, status, self._headers, False))
            self._ready.append(Upgrade(sid, req.upgrade or b"connect"))
            self._tunnel = sid
            self._in_message = False
            return
        cl = self._cl
        end = req.method == b"HEAD" or status in NO_BODY_STATUSES or cl == b"0"
        self._head_end = end
        self._until_close = cl is None and not end and not self._chunked
        self._ready.append(ResponseHeaders(sid, status, self._headers, end, self._hop_free))

    def on_body(self, body: bytes) -> None:
        if self._held is not None:
            self._ready.append(Data(self._req.sid, self._held))   # type: ignore[union-attr]
        self._held = body

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            if self._status != 101:
                self._ready.append(InformationalResponse(self._req.sid, self._status, self._headers))  # type: ignore[union-attr]
            self._in_message = False
            return
        keep = self._parser.should_keep_alive()
        self._message_done()
        if not keep:
            self._should_close = True

    def _message_done(self) -> None:
        req = self._req
        assert req is not None
        sid, held = req.sid, self._held
        self._held = None
        if self._trailers is not None:
            if held is not None:
                self._ready.append(Data(sid, held))
            self._ready.append(Trailers(sid, self._trailers))
        elif held is not None:
            self._ready.append(Data(sid, held, True))
        elif not self._head_end:
            self._ready.append(Data(sid, b"", True))
        self._in_message = False
        self._req = None
        if self._draining and self._send_sid == 0:
            self._should_close = True

    def _flush_held(self) -> None:
        if self._held is not None and self._req is not None:
            self._ready.append(Data(self._req.sid, self._held))
            self._held = None

    def _fail(self, reason: str, detail: str) -> None:
        self._dead = self._should_close = True
        self._ready.append(ConnectionError(reason, None, detail))
