"""HTTP/1.1 client codec, alone and talking to the server codec in memory."""

from __future__ import annotations

import pytest

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http1 import H1ServerCodec
from secmesh.sidecar.codec.http1_client import H1ClientCodec

from .h1util import body_of, feed


def test_round_trip_through_both_codecs_in_fragments():
    client, server = H1ClientCodec(), H1ServerCodec()
    sid = client.send_request(b"POST", b"svc.ns", b"/upload", b"http",
                              [(b"content-type", b"text/plain"), (b"host", b"ignored")])
    assert not client.can_open_stream
    client.send_data(sid, b"part1-")
    client.send_data(sid, b"part2")
    client.send_trailers(sid, [(b"x-sum", b"42")])
    events = feed(server, client.data_to_send(), 3)
    head = events[0]
    assert (head.method, head.authority, head.path) == (b"POST", b"svc.ns", b"/upload")
    assert body_of(events, 1) == b"part1-part2"
    assert events[-1] == s.Trailers(1, [(b"x-sum", b"42")])
    server.send_response(1, 201, [(b"x-r", b"1")])
    server.send_data(1, b"created")
    server.send_trailers(1, [(b"grpc-status", b"0")])
    events = feed(client, server.data_to_send(), 5)
    assert events[0] == s.ResponseHeaders(1, 201, [(b"x-r", b"1")], False)
    assert body_of(events, 1) == b"created"
    assert events[-1] == s.Trailers(1, [(b"grpc-status", b"0")])
    assert client.can_open_stream                      # keep-alive: reusable


@pytest.mark.parametrize("method,response,expect_end_at_headers", [
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", True),
    (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", True),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", True),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
])
@pytest.mark.parametrize("step", [None, 1, 4])
def test_bodyless_responses(method, response, expect_end_at_headers, step):
    client = H1ClientCodec()
    client.send_request(method, b"h", b"/", b"http", [], end_stream=True)
    events = feed(client, response, step)
    assert events[0].end_stream is expect_end_at_headers
    ends = [e for e in events if getattr(e, "end_stream", False)]
    assert len(ends) == 1
    assert client.can_open_stream


def test_head_then_get_on_the_same_connection():
    client = H1ClientCodec()
    client.send_request(b"HEAD", b"h", b"/", b"http", [], end_stream=True)
    assert client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")[0].end_stream
    client.send_request(b"GET", b"h", b"/", b"http", [], end_stream=True)
    events = client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert body_of(events, 2) == b"hello"


def test_close_delimited_body_ends_at_eof():
    client = H1ClientCodec()
    client.send_request(b"GET", b"h", b"/", b"http", [], end_stream=True)
    events = client.receive(b"HTTP/1.0 200 OK\r\n\r\nsome")
    assert body_of(events, 1) == b"some" and not any(getattr(e, "end_stream", False) for e in events)
    assert client.receive_eof() == [s.Data(1, b"", True)]
    assert client.should_close


def test_truncated_response_is_a_reset():
    client = H1ClientCodec()
    client.send_request(b"GET", b"h", b"/", b"http", [], end_stream=True)
    client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    [reset] = client.receive_eof()
    assert isinstance(reset, s.StreamReset) and reset.reason == s.Reason.EOF


def test_connection_close_response_marks_the_connection():
    client = H1ClientCodec()
    client.send_request(b"GET", b"h", b"/", b"http", [], end_stream=True)
    client.receive(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    assert client.should_close and not client.can_open_stream


def test_100_continue_then_final():
    client = H1ClientCodec()
    client.send_request(b"PUT", b"h", b"/", b"http", [(b"expect", b"100-continue"), (b"content-length", b"2")])
    assert b"content-length: 2" in client.data_to_send()
    ev = client.receive(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert ev == [s.InformationalResponse(1, 100, [])]
    client.send_data(1, b"ab", end_stream=True)
    assert client.data_to_send() == b"ab"
    ev = client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert ev == [s.ResponseHeaders(1, 200, [(b"content-length", b"0")], True)]


def test_websocket_upgrade_and_connect_tunnels():
    client = H1ClientCodec()
    client.send_request(b"GET", b"h", b"/ws", b"http", [(b"sec-websocket-key", b"k")], upgrade=b"websocket")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in client.data_to_send()
    ev = client.receive(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nFRAME")
    assert [type(e) for e in ev] == [s.ResponseHeaders, s.Upgrade, s.Data] and ev[2].data == b"FRAME"
    client.send_data(1, b"raw")
    assert client.data_to_send() == b"raw"

    client = H1ClientCodec()
    client.send_request(b"CONNECT", b"db:5432", b"", b"http", [], end_stream=False)
    assert client.data_to_send().startswith(b"CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n")
    ev = client.receive(b"HTTP/1.1 200 Connection established\r\n\r\n\x00raw")
    assert ev[1] == s.Upgrade(1, b"connect") and ev[2] == s.Data(1, b"\x00raw")


def test_connect_refused_with_a_body():
    client = H1ClientCodec()
    client.send_request(b"CONNECT", b"db:5432", b"", b"http", [])
    ev = client.receive(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 4\r\n\r\nnope")
    assert ev[0].status == 407 and body_of(ev, 1) == b"nope"


def test_upstream_garbage_is_a_connection_error():
    client = H1ClientCodec()
    client.send_request(b"GET", b"h", b"/", b"http", [], end_stream=True)
    [err] = client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert isinstance(err, s.ConnectionError) and err.reason == s.Reason.UPSTREAM_PROTOCOL_ERROR
    assert client.should_close


def test_unsolicited_bytes_make_the_connection_unusable():
    client = H1ClientCodec()
    assert client.receive(b"HTTP/1.1 200 OK\r\n\r\n") == []
    assert client.should_close and not client.can_open_stream


def test_eof_before_any_response_is_retryable_reset():
    client = H1ClientCodec()
    client.send_request(b"GET", b"h", b"/", b"http", [], end_stream=True)
    [reset] = client.receive_eof()
    assert reset == s.StreamReset(1, s.ErrorCode.CONNECT_ERROR, True, s.Reason.EOF)


def test_head_response_with_connection_close():
    client = H1ClientCodec()
    client.send_request(b"HEAD", b"h", b"/", b"http", [], end_stream=True)
    client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
    assert client.should_close and not client.can_open_stream
