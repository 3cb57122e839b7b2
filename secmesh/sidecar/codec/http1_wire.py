"""HTTP/1.1 bits shared by the server and client codecs: limits, status lines, serialization.

Serialization builds a list of byte pieces and the codec joins once per `data_to_send()`;
bodies are appended as given (never copied into a bigger buffer here).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from secmesh.sidecar.codec.stream import Headers


@dataclass(frozen=True, slots=True)
class H1Limits:
    """Per-connection limits; each has one answer (see `http1.py`).

    Defaults follow Envoy: 60 KiB of request headers, 100 headers; the request target is
    capped at 8 KiB (nginx's large_client_header_buffers). `max_body=None` means no cap
    (bodies stream through; the cap exists for listeners that want a 413).
    """

    max_request_line: int = 8 * 1024    # request-target bytes → 414
    max_header_bytes: int = 60 * 1024   # whole head (or trailer block) → 431
    max_headers: int = 100              # header (or trailer) fields → 431
    max_body: int | None = None         # request body bytes → 413


DEFAULT_LIMITS = H1Limits()

# Headers that frame or scope an HTTP/1.1 message. The codecs write these themselves, so
# copies in a caller's header list (e.g. forwarded from another hop) are dropped on send.
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade", b"te", b"host",
                                 b"http2-settings"))

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase)
                                   for code, phrase in _REASONS.items()}

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
NO_BODY_STATUSES = frozenset((204, 304))


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"status {status} out of range")
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def append_headers(out: list[bytes], headers: Headers, *, skip: frozenset[bytes] = CONNECTION_SPECIFIC
                   ) -> int | None:
    """Append `name: value\\r\\n` lines, dropping `skip` names; return a Content-Length if any."""
    length: int | None = None
    for name, value in headers:
        if name in skip:
            continue
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                continue            # never forward a length we could not honour
        out += (name, b": ", value, CRLF)
    return length


def chunk(out: list[bytes], data: bytes | memoryview) -> None:
    """Append one chunk of a chunked body (no copy of `data`)."""
    out += (b"%x\r\n" % len(data), data, CRLF)


def trailer_block(out: list[bytes], headers: Headers) -> None:
    """Append the last chunk with trailers: `0\\r\\n`, fields, `\\r\\n`."""
    out.append(b"0\r\n")
    append_headers(out, headers, skip=_TRAILER_FORBIDDEN)
    out.append(CRLF)


# RFC 9110 §6.5.1: fields that frame, route or authenticate must not be sent as trailers.
_TRAILER_FORBIDDEN = CONNECTION_SPECIFIC | frozenset((b"content-length", b"content-type",
                                                      b"authorization", b"set-cookie"))


def error_response(status: int) -> bytes:
    """A complete, self-contained answer that closes the connection (what a bad peer gets).

    The body is the bare reason phrase: opaque on purpose, the details go to the log.
    """
    body = _REASONS.get(status, b"Error") + b"\n"
    return b"".join((status_line(status), b"content-type: text/plain\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body))


def is_token_list_member(value: bytes, token: bytes) -> bool:
    """Is `token` one of the comma-separated, case-insensitive elements of `value`?"""
    return any(part.strip().lower() == token for part in value.split(b","))

