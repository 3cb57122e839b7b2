"""Serializing the HTTP/1.1 server's responses, one at a time, with the right body framing.

The framing follows RFC 9112 §6: no body for HEAD / 204 / 304; the caller's Content-Length
when given (and never a byte past it); chunked for HTTP/1.1 without one (so trailers work);
delimited by close for HTTP/1.0. Pieces are appended to `out` and joined once by `take()`.
"""

from __future__ import annotations

from secmesh.sidecar.codec.http1_wire import (
    CONNECTION_SPECIFIC, CRLF, LAST_CHUNK, NO_BODY_STATUSES, append_headers, chunk, error_response,
    status_line, trailer_block,
)
from secmesh.sidecar.codec.stream import Headers

NONE, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3
_TUNNEL_SKIP = CONNECTION_SPECIFIC | frozenset((b"content-length",))


class ResponseWriter:
    __slots__ = ("out", "started", "mode", "left", "close")

    def __init__(self) -> None:
        self.out: list[bytes | memoryview] = []
        self.started = False       # a final response head is out, its body not finished
        self.mode = NONE
        self.left = 0
        self.close = False          # the connection ends with this response

    def take(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return b"".join(out)

    def error(self, status: int) -> None:
        self.out.append(error_response(status))

    def informational(self, status: int, headers: Headers) -> None:
        out = self.out
        out.append(status_line(status))
        append_headers(out, headers)
        out.append(CRLF)

    def tunnel_head(self, status: int, headers: Headers, upgrade: bytes | None) -> None:
        """101 Switching Protocols (with `upgrade`) or a 2xx to CONNECT: no body framing."""
        out = self.out
        out.append(status_line(status))
        append_headers(out, headers, skip=_TUNNEL_SKIP)
        if upgrade is not None:
            out += (b"connection: upgrade\r\nupgrade: ", upgrade, CRLF)
        out.append(CRLF)

    def head(self, status: int, headers: Headers, *, head_request: bool, http10: bool,
             close: bool, end_stream: bool) -> None:
        out = self.out
        out.append(status_line(status))
        length = append_headers(out, headers)
        if head_request or status in NO_BODY_STATUSES:
            mode = NONE
        elif length is not None:
            mode, self.left = LENGTH, length
        elif end_stream:
            out.append(b"content-length: 0\r\n")
            mode = NONE
        elif not http10:
            out.append(b"transfer-encoding: chunked\r\n")
            mode = CHUNKED
        else:
            mode, close = UNTIL_CLOSE, True
        if close:
            out.append(b"connection: close\r\n")
        elif http10:
            out.append(b"connection: keep-alive\r\n")
        out.append(CRLF)
        self.started, self.mode, self.close = True, mode, close

    def body(self, data: bytes | memoryview) -> None:
        mode = self.mode
        if mode == CHUNKED:
            chunk(self.out, data)
        elif mode == LENGTH:
            n = len(data)
            if n > self.left:                   # never write past the declared length
                data, n, self.close = data[:self.left], self.left, True
            self.left -= n
            self.out.append(data)
        elif mode == UNTIL_CLOSE:
            self.out.append(data)

    def trailers(self, headers: Headers) -> None:
        if self.mode == CHUNKED:
            trailer_block(self.out, headers)
            self.mode = NONE                    # the last chunk is written

    def end(self) -> bool:
        """Finish the body; True if the connection can carry another response."""
        if self.mode == CHUNKED:
            self.out.append(LAST_CHUNK)
        intact = not self.close and not (self.mode == LENGTH and self.left)
        self.started, self.mode, self.left = False, NONE, 0
        return intact
