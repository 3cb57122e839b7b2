"""HTTP/1.1 server codec (downstream side) on httptools/llhttp, sans-I/O.

llhttp does the byte work; this module maps its callbacks onto the stream model and adds
limits with their answers (414, 431, 413), pipelining and tunnels (WebSocket, CONNECT).
The head rules llhttp leaves to us are in `http1_head.py`; response framing is in
`http1_response.py`.

Pipelining (uvicorn's rule): request N+1 is parsed as soon as its bytes arrive, but its events
are queued until the response to request N has finished; `wants_pause` tells the I/O shell to
stop reading meanwhile, so the queue stays as small as one read. Bodies stream: one `Data` per
llhttp body callback, never a whole-body buffer (only the last piece of a feed is held back so
that it can carry `end_stream`).

A peer error stops parsing and yields one `ConnectionError`; if no byte of a response is out
yet for that request, the matching error response (always `Connection: close`) is queued.
"""

from __future__ import annotations

from collections import deque

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from secmesh.sidecar.codec.http1_response import ResponseWriter
from secmesh.sidecar.codec.http1_head import (
    IGNORED_UPGRADE, TUNNEL, Refusal, RequestMeta, accept_head, parser_error_reason,
)
from secmesh.sidecar.codec.http1_wire import DEFAULT_LIMITS, H1Limits
from secmesh.sidecar.codec.stream import (
    CodecUsageError, ConnectionError, Data, ErrorCode, Event, Headers, Reason, RequestHeaders,
    StreamReset, Trailers, Upgrade,
)



_new_meta = tuple.__new__        # RequestMeta(...) without the namedtuple's Python-level __new__
_SPECIAL = frozenset((b"host", b"transfer-encoding", b"content-length", b"expect", b"upgrade"))


class _Abort(Exception):
    """Raised inside a parser callback after `_fail`; makes llhttp stop at once."""


class H1ServerCodec:
    """One downstream HTTP/1.x connection. Stream ids are 1, 2, 3… in request order."""

    protocol = "http1"

    def __init__(self, *, limits: H1Limits = DEFAULT_LIMITS, scheme: bytes = b"http",
                 allowed_upgrades: frozenset[bytes] = frozenset((b"websocket",)),
                 allow_connect: bool = True) -> None:
        self._limits = limits
        self._max_fields, self._max_head = limits.max_headers, limits.max_header_bytes
        self._scheme, self._allowed_upgrades, self._allow_connect = scheme, allowed_upgrades, allow_connect
        self._parser = HttpRequestParser(self)
        self._w = ResponseWriter()
        self._ready: list[Event] = []
        self._queue: deque[tuple[int, Event]] = deque()   # events of requests after the active one
        self._meta: dict[int, RequestMeta] = {}
        # parse state of the message being read
        self._cur = self._raw_left = 0
        self._in_message = self._in_head = self._dead = False
        self._held: bytes | None = None
        self._reset_message_state()
        # exchange state
        self._active = 1            # the request whose response is the current one
        self._complete = 0          # highest request id received in full
        self._tunnel: int | None = None
        self._upgrade_wait: int | None = None
        self._held_input: list[bytes] = []
        self._should_close = self._eof = self._draining = False

    # === state the I/O shell reads ===

    @property
    def should_close(self) -> bool:
        return self._should_close

    @property
    def wants_pause(self) -> bool:
        return bool(self._queue) or self._upgrade_wait is not None or self._should_close

    @property
    def in_headers(self) -> bool:
        """A request head has started and is not complete (the slowloris timer runs now)."""
        return self._in_head and not self._dead

    @property
    def awaiting_headers(self) -> bool:
        """Waiting for (the rest of) a request head, nothing of ours outstanding."""
        return not self._dead and self._tunnel is None and (
            self._in_head or (not self._in_message and self._active > self._cur))

    @property
    def bytes_in_headers(self) -> int:
        return max(self._head_cb, self._head_raw) if self._in_head else 0

    # === input ===

    def receive(self, data: bytes) -> list[Event]:
        if self._tunnel is not None:
            return [Data(self._tunnel, data)] if data else []
        if self._upgrade_wait is not None:
            self._held_input.append(data)
        elif not self._dead and not self._should_close and data:
            self._feed(data)
        return self.ready_events()

    def receive_eof(self) -> list[Event]:
        if self._eof:
            return []
        self._eof = True
        if self._tunnel is not None:
            return [Data(self._tunnel, b"", True)]
        if self._upgrade_wait is not None:
            self._route(self._upgrade_wait, StreamReset(self._upgrade_wait, ErrorCode.CANCEL, True, Reason.EOF))
            self._should_close = True
        elif self._in_message and not self._dead:
            self._dead = True
            if self._cur == self._active:
                self._deliver(StreamReset(self._cur, ErrorCode.CANCEL, True, Reason.EOF))
        if self._active > self._cur or (self._dead and not self._w.started):
            self._should_close = True
        return self.ready_events()

    def ready_events(self) -> list[Event]:
        ready = self._ready
        self._ready = []
        return ready

    def _feed(self, data: bytes | memoryview) -> None:
        while data:
            if self._raw_left:                       # body of an ignored upgrade (h2c), by length
                n = min(self._raw_left, len(data))
                self._raw_left -= n
                self.on_body(bytes(data[:n]))
                data = data[n:]
                if not self._raw_left:
                    self._message_done()
                continue
            was_in_head = self._in_head
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as exc:
                data = memoryview(data)[exc.args[0]:]
                if self._upgrade_wait is not None:
                    if len(data):
                        self._held_input.append(bytes(data))
                    return
                self._parser = HttpRequestParser(self)   # ignored upgrade: go on as HTTP/1.1
                continue
            except HttpParserError as exc:
                cause = exc.__context__
                if cause is not None and not isinstance(cause, _Abort):
                    raise cause                          # a bug of ours, not the peer's bytes
                if not self._dead:
                    self._fail(400, parser_error_reason(str(exc)), str(exc))
                return
            if self._held is not None:
                self._route(self._cur, Data(self._cur, self._held))
                self._held = None
            if was_in_head and self._in_head:            # the whole read was head bytes
                self._head_raw += len(data)
                if self._head_raw > self._limits.max_header_bytes + self._limits.max_request_line:
                    self._fail(431, Reason.HEADERS_TOO_LARGE, "request head too large")
            return

    # === llhttp callbacks (names fixed by httptools) ===

    def _reset_message_state(self) -> None:
        self._url: list[bytes] = []
        self._headers: Headers = []
        self._hosts: list[bytes] = []
        self._url_len = self._n_fields = self._head_cb = self._head_raw = self._body = 0
        self._cl: int | None = None
        self._te: bytes | None = None
        self._expect = False
        self._upgrade_token = b""
        self._trailers: Headers | None = None
        self._end_at_headers = False

    def on_message_begin(self) -> None:
        self._cur += 1
        self._in_message = self._in_head = True
        self._reset_message_state()

    def on_url(self, piece: bytes) -> None:
        self._url_len += len(piece)
        if self._url_len > self._limits.max_request_line:
            self._abort(414, Reason.URI_TOO_LONG, "request target too long")
        self._url.append(piece)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._n_fields += 1
        self._head_cb += len(name) + len(value) + 4
        if self._n_fields > self._max_fields:
            self._abort(431, Reason.TOO_MANY_HEADERS, "too many header fields")
        if self._head_cb > self._max_head:
            self._abort(431, Reason.HEADERS_TOO_LARGE, "header block too large")
        name = name.lower()
        if name not in _SPECIAL and self._in_head:
            self._headers.append((name, value))
        elif not self._in_head:                          # chunked trailers come after the body
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
        elif name == b"host":
            self._hosts.append(value)
        elif name == b"transfer-encoding":
            self._te = value                             # framing consumed here, never forwarded
        else:
            if name == b"content-length":
                self._cl = int(value)                    # llhttp already refused junk and repeats
            elif name == b"expect":
                self._expect = value.lower() == b"100-continue"
            else:
                self._upgrade_token = value.split(b",", 1)[0].strip().lower()
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._parser
        method = p.get_method()
        url = self._url
        verdict = accept_head(method, p.get_http_version(), url[0] if len(url) == 1 else b"".join(url), self._hosts,
                              self._te is not None, self._cl, p.should_upgrade(), self._upgrade_token,
                              self._limits.max_body, self._allowed_upgrades, self._allow_connect)
        if type(verdict) is Refusal:
            self._abort(verdict.status, verdict.reason, verdict.detail)
        version, authority, path, kind, proto = verdict
        if kind == IGNORED_UPGRADE:                      # e.g. h2c: served as plain HTTP/1.1
            self._headers = [(n, v) for n, v in self._headers if n not in (b"upgrade", b"http2-settings")]
        sid = self._cur
        self._meta[sid] = _new_meta(RequestMeta, (method, version, p.should_keep_alive(), kind, proto))
        self._end_at_headers = kind != TUNNEL and self._te is None and not self._cl
        self._route(sid, RequestHeaders(sid, method, authority, path, self._scheme, self._headers,
                                        self._end_at_headers, version, self._expect))
        if kind == TUNNEL:
            self._route(sid, Upgrade(sid, proto))

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        max_body = self._limits.max_body
        if max_body is not None and self._body > max_body:
            self._abort(413, Reason.BODY_TOO_LARGE, "request body over the limit")
        if self._held is not None:
            self._route(self._cur, Data(self._cur, self._held))
        self._held = body

    def on_message_complete(self) -> None:
        kind = self._meta[self._cur].kind
        if kind == TUNNEL:
            self._upgrade_wait = self._cur
            self._complete = self._cur
            self._in_message = False
        elif kind == IGNORED_UPGRADE and self._cl:
            self._raw_left = self._cl                    # llhttp skipped the body: read it by length
        else:
            self._message_done()

    def _message_done(self) -> None:
        sid, held = self._cur, self._held
        self._held = None
        if self._trailers is not None:
            if held is not None:
                self._route(sid, Data(sid, held))
            self._route(sid, Trailers(sid, self._trailers))
        elif held is not None:
            self._route(sid, Data(sid, held, True))
        elif not self._end_at_headers:
            self._route(sid, Data(sid, b"", True))
        self._complete = sid
        self._in_message = False

    # === errors ===

    def _abort(self, status: int, reason: str, detail: str) -> None:
        self._fail(status, reason, detail)
        raise _Abort(reason)

    def _fail(self, status: int | None, reason: str, detail: str) -> None:
        self._dead = True
        self._held = None
        sid = self._cur if self._in_message else self._cur + 1
        self._route(sid, ConnectionError(reason, status, detail))

    def _route(self, sid: int, ev: Event) -> None:
        if sid == self._active:
            self._deliver(ev)
        else:
            self._queue.append((sid, ev))

    def _deliver(self, ev: Event) -> None:
        self._ready.append(ev)
        if type(ev) is ConnectionError:
            if ev.http_status is not None and not self._w.started:
                self._w.error(ev.http_status)
            self._should_close = True

    # === output ===

    def data_to_send(self) -> bytes:
        return self._w.take()

    def _current(self, stream_id: int) -> RequestMeta | None:
        if self._should_close and not self._w.started:
            return None                                  # an error answer owns the wire now
        if stream_id != self._active or stream_id not in self._meta:
            raise CodecUsageError(f"stream {stream_id} is not the current request ({self._active})")
        return self._meta[stream_id]

    def send_informational(self, stream_id: int, status: int = 100, headers: Headers | None = None) -> None:
        meta = self._current(stream_id)
        if meta is None or self._w.started:
            return
        if status == 101:
            self.send_response(stream_id, status, headers or [])
        elif not 100 <= status < 200:
            raise CodecUsageError(f"{status} is not informational")
        elif meta.version == b"1.1":                      # HTTP/1.0 clients do not expect 1xx
            self._w.informational(status, headers or [])

    def send_response(self, stream_id: int, status: int, headers: Headers, end_stream: bool = False) -> None:
        meta = self._current(stream_id)
        if meta is None:
            return
        if self._w.started:
            raise CodecUsageError(f"response for stream {stream_id} already started")
        if status < 200 and status != 101:
            self.send_informational(stream_id, status, headers)
            return
        if status == 101 and meta.kind != TUNNEL:
            raise CodecUsageError("101 for a request that asked for no upgrade")
        if meta.kind == TUNNEL and (status == 101 or (meta.upgrade == b"connect" and status < 300)):
            self._w.tunnel_head(status, headers, meta.upgrade if status == 101 else None)
            self._open_tunnel(stream_id)
            return
        close = not meta.keep_alive or self._draining or meta.kind == TUNNEL or self._complete < stream_id
        self._w.head(status, headers, head_request=meta.method == b"HEAD",
                     http10=meta.version == b"1.0", close=close, end_stream=end_stream)
        if end_stream:
            self._response_done()

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        if self._tunnel is not None:
            if data:
                self._w.out.append(data)
            if end_stream:
                self._should_close = True
            return
        if self._current(stream_id) is None:
            return
        if not self._w.started:
            raise CodecUsageError("send_response first")
        if data:
            self._w.body(data)
        if end_stream:
            self._response_done()

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self._current(stream_id) is None:
            return
        self._w.trailers(headers)
        self._response_done()

    def _response_done(self) -> None:
        sid = self._active
        del self._meta[sid]
        if not self._w.end() or self._complete < sid:
            self._should_close = True                    # framing broken or request unread
            return
        self._active = sid + 1
        queue = self._queue
        while queue and queue[0][0] == self._active:
            self._deliver(queue.popleft()[1])
        if (self._eof or self._draining) and (self._active > self._cur or self._dead):
            self._should_close = True

    def _open_tunnel(self, stream_id: int) -> None:
        self._tunnel, self._upgrade_wait = stream_id, None
        if self._held_input:
            self._ready.append(Data(stream_id, b"".join(self._held_input)))
            self._held_input = []
        if self._eof:
            self._ready.append(Data(stream_id, b"", True))

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """HTTP/1.1 cannot reset one exchange: the connection goes."""
        self._dead = self._should_close = True

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        """No-op: HTTP/1.1 backpressure is pausing the transport."""

    def start_drain(self) -> None:
        self._draining = True
        if not self._w.started and self._active > self._cur:
            self._should_close = True

    def close(self) -> None:
        self._dead = self._should_close = True
