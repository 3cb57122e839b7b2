"""HTTP/2 codecs on h2: `H2ServerCodec` (downstream) and `H2ClientCodec` (upstream, gRPC too).

Both speak the stream model through `H2Codec` (`http2_conn.py`); this module holds only what
differs by role: who opens streams, the request/response pseudo-headers, and draining.
"""

from __future__ import annotations

from secmesh.sidecar.codec.http2_conn import STATUS_BYTES, PREFACE, H2Codec, H2Settings
from secmesh.sidecar.codec.http2_headers import outbound_fields
from secmesh.sidecar.codec.stream import CodecUsageError, ErrorCode, Event, Headers, Reason, StreamReset

__all__ = ["PREFACE", "H2ClientCodec", "H2ServerCodec", "H2Settings"]


class H2ServerCodec(H2Codec):
    """Downstream HTTP/2: receives requests, sends responses. Feed it the client's preface too."""

    _client_side = False

    def _accept_stream(self, sid: int, headers: list, end: bool, out: list[Event]) -> bool:
        self._guard.opened()
        self._open[sid] = 0
        if self._draining and sid > self._drain_last:
            return self._refuse(sid, Reason.REFUSED, out)
        if len(self._open) > self._settings.max_concurrent_streams:
            if self._guard.premature_reset():
                self._die(ErrorCode.ENHANCE_YOUR_CALM, Reason.RAPID_RESET, "streams over the limit")
                return False
            return self._refuse(sid, Reason.REFUSED, out)
        size = sum(len(n) + len(v) + 32 for n, v in headers)
        if size > self._settings.max_header_list_size:
            self._ignored.add(sid)
            self._send_headers(sid, [(b":status", b"431")], True)
            if not end and sid in self._open:     # stop the body we will not read
                self._h2.reset_stream(sid, ErrorCode.NO_ERROR)
            self._forget(sid)
            out.append(StreamReset(sid, ErrorCode.REFUSED_STREAM, False, Reason.HEADERS_TOO_LARGE))
            return False
        return True

    def _refuse(self, sid: int, reason: str, out: list[Event]) -> bool:
        self._h2.reset_stream(sid, ErrorCode.REFUSED_STREAM)
        self._forget(sid)
        out.append(StreamReset(sid, ErrorCode.REFUSED_STREAM, False, reason))
        return False

    def send_informational(self, stream_id: int, status: int = 100, headers: Headers | None = None) -> None:
        if not 100 <= status < 200 or status == 101:
            raise CodecUsageError(f"{status} is not an HTTP/2 informational status")
        self._send_headers(stream_id, outbound_fields(headers or [], [(b":status", STATUS_BYTES[status])]), False)

    def send_response(self, stream_id: int, status: int, headers: Headers, end_stream: bool = False) -> None:
        self._send_headers(stream_id, outbound_fields(headers, [(b":status", STATUS_BYTES[status])]), end_stream)

    def start_drain(self) -> None:
        if not self._draining and not self._fatal:
            self._draining = True
            self._drain_last = self._h2.highest_inbound_stream_id
            self._goaway(self._drain_last)


class H2ClientCodec(H2Codec):
    """Upstream HTTP/2: sends requests, receives responses (gRPC included)."""

    _client_side = True

    def _accept_stream(self, sid: int, headers: list, end: bool, out: list[Event]) -> bool:
        return False                              # servers cannot open streams (push is off)

    @property
    def can_open_stream(self) -> bool:
        return (not self._fatal and not self._draining and self._goaway_last is None
                and len(self._open) < self._h2.remote_settings.max_concurrent_streams)

    def send_request(self, method: bytes, authority: bytes, path: bytes, scheme: bytes,
                     headers: Headers, end_stream: bool = False) -> int:
        if not self.can_open_stream:
            raise CodecUsageError("no new streams on this connection")
        sid = self._h2.get_next_available_stream_id()
        if method == b"CONNECT":
            pseudo = [(b":method", method), (b":authority", authority)]
        elif path and scheme:                     # h2 no longer checks what we send: we do
            pseudo = [(b":method", method), (b":scheme", scheme), (b":authority", authority),
                      (b":path", path)]
        else:
            raise CodecUsageError("an HTTP/2 request needs a non-empty :path and :scheme")
        headers = outbound_fields(headers, pseudo)
        self._open[sid] = 0
        self._send_headers(sid, headers, end_stream)
        return sid

    def start_drain(self) -> None:
        if not self._draining and not self._fatal:
            self._draining = True
            self._goaway(0)
