"""The protocol-neutral stream model every codec speaks (MOSN's PROTOCOL → STREAM boundary).

A codec is a sans-I/O object: it turns received bytes into the frozen events below and turns
`send_*` calls into bytes, and never touches a socket, a loop or a clock it was not given.
Authz, router and upstream pools see only these events, so a new protocol is one codec module
plus one detection rule in `detect.py`, with nothing to change above it.

Conventions shared by every codec:
- Header names are lower-case bytes; values are bytes. Pseudo-headers never appear in
  `headers`: a request's `:method/:scheme/:authority/:path` are fields, and HTTP/1.1's `Host`
  becomes `authority` (it is not repeated in `headers`).
- A stream ends (one direction) with exactly one event carrying `end_stream=True`, or with
  `Trailers`, or with `StreamReset`. After `Upgrade`, the stream is an opaque byte tunnel whose
  `Data` events carry raw bytes until one with `end_stream=True` (EOF).
- `ConnectionError` is the only way a codec reports that the peer broke the protocol; when it
  carries `http_status`, the codec has already queued that answer in `data_to_send()`.
  The I/O shell writes what is queued and closes once `should_close` is true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, Union

Headers = list[tuple[bytes, bytes]]


class ErrorCode(IntEnum):
    """RFC 9113 §7 error codes; used for stream resets by every codec, not only HTTP/2."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Reason:
    """Closed vocabulary for `ConnectionError.reason` / `StreamReset.reason` (metric labels)."""

    BAD_REQUEST = "bad_request"
    SMUGGLING = "smuggling"                 # framing that two parsers could read differently
    HEADERS_TOO_LARGE = "headers_too_large"
    TOO_MANY_HEADERS = "too_many_headers"
    URI_TOO_LONG = "uri_too_long"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PROTOCOL_ERROR = "protocol_error"       # HTTP/2 framing / HPACK / state violations
    RAPID_RESET = "rapid_reset"             # CVE-2023-44487
    CONTROL_FLOOD = "control_flood"         # CVE-2019-9512/9515: frames to answer, answers unread
    REFUSED = "refused"                     # over max_concurrent_streams or after GOAWAY
    PEER_GOAWAY = "peer_goaway"
    EOF = "eof"                             # the peer closed mid-message
    UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error"


# === events ===

@dataclass(slots=True)  # not frozen: a frozen init costs one object.__setattr__ per field
class RequestHeaders:
    stream_id: int
    method: bytes
    authority: bytes
    path: bytes
    scheme: bytes
    headers: Headers
    end_stream: bool = False
    http_version: bytes = b"1.1"        # b"1.0", b"1.1" or b"2"
    expect_continue: bool = False       # `Expect: 100-continue` was sent; see send_informational


@dataclass(slots=True)  # not frozen: a frozen init costs one object.__setattr__ per field
class ResponseHeaders:
    stream_id: int
    status: int
    headers: Headers
    end_stream: bool = False
    hop_free: bool = field(default=False, compare=False)   # the codec already dropped every hop-by-hop field (none to strip)


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """A 1xx other than 101 (e.g. 100 Continue) received by a client codec."""

    stream_id: int
    status: int
    headers: Headers


@dataclass(slots=True)  # not frozen: a frozen init costs one object.__setattr__ per field
class Data:
    stream_id: int
    data: bytes | memoryview
    end_stream: bool = False


@dataclass(slots=True)  # not frozen: a frozen init costs one object.__setattr__ per field
class Trailers:
    """Trailing headers; always ends the stream in its direction (gRPC status lives here)."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The stream became a raw tunnel (`protocol` is e.g. b"websocket" or b"connect").

    Server side: emitted right after the RequestHeaders of an Upgrade/CONNECT request; the proxy
    answers with `send_response(101 | 2xx)` to open the tunnel, or any other status to refuse
    (the connection then closes after that response). Client side: emitted after a 101 / a 2xx
    to CONNECT; later `Data` on the stream is opaque.
    """

    stream_id: int
    protocol: bytes


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int = ErrorCode.CANCEL
    remote: bool = True                 # False: the codec itself reset it (e.g. refused)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer will accept no streams above `last_stream_id`; open none on this connection."""

    last_stream_id: int
    error_code: int = ErrorCode.NO_ERROR


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """A stream's send buffer (held back by peer flow control) drained: resume its source."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionError:  # noqa: A001 - the model's name; codec modules never need the builtin
    """The peer broke the protocol; the connection is finished after `data_to_send()`."""

    reason: str
    http_status: int | None = None
    detail: str = ""


Event = Union[RequestHeaders, ResponseHeaders, InformationalResponse, Data, Trailers, Upgrade,
              StreamReset, GoAway, StreamWritable, ConnectionError]


class CodecUsageError(RuntimeError):
    """The caller drove a codec wrongly (e.g. a response for a stream that is not current).

    A programming error in the proxy layer, never caused by a peer's bytes.
    """


# === the codec interface ===

class Codec(Protocol):
    """What the I/O shell and the proxy layer use, whatever the protocol."""

    protocol: str                       # "http1" | "http2"

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes read from the peer; return the events that are ready now."""
        ...

    def receive_eof(self) -> list[Event]:
        """The peer closed its sending side."""
        ...

    def ready_events(self) -> list[Event]:
        """Events made ready by our own sends (a pipelined request released once the previous
        response finished, tunnel bytes after a 101). Call after finishing a response."""
        ...

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None: ...

    def send_trailers(self, stream_id: int, headers: Headers) -> None: ...

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None: ...

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        """The consumer is done with `n` bytes of `Data` on the stream; opens the peer's window.
        Until then a slow consumer holds the producer back (HTTP/2); a no-op for HTTP/1.1,
        whose backpressure is pausing the transport."""
        ...

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, joined once. (HTTP/2 holds DATA the peer's window
        does not admit yet: see `buffered(stream_id)` and the `StreamWritable` event.)"""
        ...

    def start_drain(self) -> None:
        """Stop taking new streams (GOAWAY / `Connection: close`); finish the open ones."""
        ...

    def close(self) -> None: ...

    @property
    def should_close(self) -> bool:
        """Close the transport once `data_to_send()` has been written."""
        ...

    @property
    def wants_pause(self) -> bool:
        """Pause reading from the peer: the codec holds parsed-ahead input it cannot hand on yet."""
        ...


class ServerCodec(Codec, Protocol):
    """Downstream side: receives requests, sends responses."""

    def send_informational(self, stream_id: int, status: int = 100,
                           headers: Headers | None = None) -> None: ...

    def send_response(self, stream_id: int, status: int, headers: Headers,
                      end_stream: bool = False) -> None: ...


class ClientCodec(Codec, Protocol):
    """Upstream side: sends requests, receives responses."""

    def send_request(self, method: bytes, authority: bytes, path: bytes, scheme: bytes,
                     headers: Headers, end_stream: bool = False) -> int:
        """Start a request; returns its stream id. (HTTP/1.1 also takes `upgrade=b"websocket"`
        to ask for a protocol switch: it writes `Connection: upgrade` + `Upgrade` itself.)"""
        ...

    @property
    def can_open_stream(self) -> bool: ...
