"""HTTP/1.1 server codec: pipelining, bodies, 100-continue, tunnels, limits, smuggling."""

from __future__ import annotations

import pytest

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http1 import H1ServerCodec
from secmesh.sidecar.codec.http1_wire import H1Limits

from .h1util import body_of, feed, feed_sizes, parse_responses

PIPELINE = (
    b"GET /one HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n\r\n"
    b"POST /two?q=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 11\r\n\r\nhello world"
    b"POST /three HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"
    b"GET /four HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
)


def answer(codec: H1ServerCodec, sid: int, body: bytes = b"ok") -> None:
    codec.send_response(sid, 200, [(b"content-type", b"text/plain")])
    codec.send_data(sid, body, end_stream=True)


def run_pipeline(step_sizes) -> tuple[list, bytes]:
    codec = H1ServerCodec()
    events = feed_sizes(codec, PIPELINE, step_sizes)
    wire = b""
    seen = list(events)
    for sid in (1, 2, 3, 4):
        heads = [e for e in seen if isinstance(e, s.RequestHeaders)]
        assert heads[-1].stream_id == sid, f"request {sid} must be released only after {sid - 1} is answered"
        assert codec.wants_pause == (sid < 4)          # later requests are queued, reading pauses
        answer(codec, sid, b"r%d" % sid)
        wire += codec.data_to_send()
        seen += codec.ready_events()
    assert codec.should_close
    return seen, wire


@pytest.mark.parametrize("sizes", [(1,), (2,), (3,), (7,), (1, 7, 2, 5), (len(PIPELINE),)])
def test_pipelining_in_fragments(sizes):
    events, wire = run_pipeline(sizes)
    heads = [e for e in events if isinstance(e, s.RequestHeaders)]
    assert [(h.method, h.path, h.authority) for h in heads] == [
        (b"GET", b"/one", b"a.example"), (b"POST", b"/two?q=1", b"a.example"),
        (b"POST", b"/three", b"a.example"), (b"GET", b"/four", b"a.example")]
    assert heads[0].end_stream and heads[0].headers == [(b"x-a", b"1")]
    assert not heads[1].end_stream and body_of(events, 2) == b"hello world"
    assert body_of(events, 3) == b"hello world"
    trailers = [e for e in events if isinstance(e, s.Trailers)]
    assert trailers == [s.Trailers(3, [(b"x-checksum", b"abc"), (b"x-other", b"2")])]
    # every request direction ends exactly once
    ends = [e.stream_id for e in events if getattr(e, "end_stream", False) or isinstance(e, s.Trailers)]
    assert sorted(ends) == [1, 2, 3, 4]
    responses = parse_responses(wire)
    assert [(r["status"], r["body"]) for r in responses] == [(200, b"r1"), (200, b"r2"), (200, b"r3"), (200, b"r4")]
    assert (b"connection", b"close") in responses[-1]["headers"]


def test_body_streams_per_callback_not_buffered():
    codec = H1ServerCodec()
    ev = codec.receive(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 30000\r\n\r\n" + b"a" * 1000)
    assert isinstance(ev[0], s.RequestHeaders) and ev[1] == s.Data(1, b"a" * 1000)
    ev = codec.receive(b"b" * 29000)
    assert ev == [s.Data(1, b"b" * 29000, True)]


def test_response_framing_chunked_length_and_trailers():
    codec = H1ServerCodec()
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n")
    codec.send_response(1, 200, [(b"content-type", b"application/grpc"), (b"connection", b"x"),
                                 (b"transfer-encoding", b"gzip")])
    codec.send_data(1, b"abc")
    codec.send_trailers(1, [(b"grpc-status", b"0"), (b"content-length", b"9")])
    wire = codec.data_to_send()
    assert wire == (b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n")
    codec.receive(b"GET / HTTP/1.0\r\n\r\n")
    codec.send_response(2, 200, [])
    codec.send_data(2, b"until close", end_stream=True)
    wire = codec.data_to_send()
    assert b"connection: close" in wire and b"chunked" not in wire and wire.endswith(b"until close")
    assert codec.should_close


def test_http10_keep_alive_and_head():
    codec = H1ServerCodec()
    codec.receive(b"HEAD /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    codec.send_response(1, 200, [(b"content-length", b"1234")], end_stream=True)
    assert codec.data_to_send() == b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nconnection: keep-alive\r\n\r\n"
    assert not codec.should_close


def test_content_length_is_honoured_on_send():
    codec = H1ServerCodec()
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    codec.send_response(1, 200, [(b"content-length", b"3")])
    codec.send_data(1, b"abcdef", end_stream=True)       # more than declared: cut, then close
    assert codec.data_to_send().endswith(b"\r\n\r\nabc") and codec.should_close


def test_expect_100_continue():
    codec = H1ServerCodec()
    ev = codec.receive(b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert ev[0].expect_continue and not ev[0].end_stream
    codec.send_informational(1, 100)
    assert codec.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert codec.receive(b"data") == [s.Data(1, b"data", True)]
    answer(codec, 1)
    assert [r["status"] for r in parse_responses(codec.data_to_send())] == [200]
    assert not codec.should_close


def test_early_response_before_body_closes():
    codec = H1ServerCodec()
    codec.receive(b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    codec.send_response(1, 403, [], end_stream=True)       # denied without reading the body
    assert b"connection: close" in codec.data_to_send() and codec.should_close


def test_websocket_upgrade_opens_a_tunnel():
    codec = H1ServerCodec()
    req = (b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nEARLY")
    ev = codec.receive(req)
    assert isinstance(ev[0], s.RequestHeaders) and not ev[0].end_stream
    assert ev[1] == s.Upgrade(1, b"websocket")
    assert codec.receive(b"MORE") == [] and codec.wants_pause      # held until the proxy decides
    codec.send_response(1, 101, [(b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")])
    wire = codec.data_to_send()
    assert wire.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in wire
    assert codec.ready_events() == [s.Data(1, b"EARLYMORE")]
    assert codec.receive(b"\x81\x05hello") == [s.Data(1, b"\x81\x05hello")]
    codec.send_data(1, b"\x81\x02hi")
    assert codec.data_to_send() == b"\x81\x02hi"
    assert codec.receive_eof() == [s.Data(1, b"", True)]


def test_refused_upgrade_closes_after_the_answer():
    codec = H1ServerCodec()
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    codec.send_response(1, 403, [], end_stream=True)
    assert b"connection: close" in codec.data_to_send() and codec.should_close


def test_connect_tunnel():
    codec = H1ServerCodec()
    ev = codec.receive(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01")
    assert ev[0].method == b"CONNECT" and ev[0].authority == b"db.internal:5432"
    assert ev[1] == s.Upgrade(1, b"connect")
    codec.send_response(1, 200, [(b"content-length", b"0")])
    assert codec.data_to_send() == b"HTTP/1.1 200 OK\r\n\r\n"
    assert codec.ready_events() == [s.Data(1, b"\x00\x01")]


def test_h2c_upgrade_is_served_as_http11():
    codec = H1ServerCodec()
    ev = codec.receive(b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 3\r\n\r\nabc"
                       b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [type(e) for e in ev] == [s.RequestHeaders, s.Data]
    assert ev[1] == s.Data(1, b"abc", True)
    assert all(n not in (b"upgrade", b"http2-settings") for n, _ in ev[0].headers)
    answer(codec, 1)
    nxt = codec.ready_events()
    assert nxt[0].path == b"/next"


def test_absolute_form_target_wins_over_host():
    codec = H1ServerCodec()
    ev = codec.receive(b"GET http://real.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (ev[0].authority, ev[0].path) == (b"real.example:8080", b"/p?q")


def error_of(codec: H1ServerCodec, data: bytes, step: int | None = None) -> tuple[s.ConnectionError, int]:
    events = feed(codec, data, step)
    errors = [e for e in events if isinstance(e, s.ConnectionError)]
    assert len(errors) == 1, events
    responses = parse_responses(codec.data_to_send())
    assert codec.should_close
    assert (b"connection", b"close") in responses[-1]["headers"]
    return errors[0], responses[-1]["status"]


LIMITS = H1Limits(max_request_line=100, max_header_bytes=300, max_headers=5, max_body=10)


@pytest.mark.parametrize("data,status,reason", [
    (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, s.Reason.URI_TOO_LONG),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 400 + b"\r\n\r\n", 431, s.Reason.HEADERS_TOO_LARGE),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(6)) + b"\r\n",
     431, s.Reason.TOO_MANY_HEADERS),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", 413, s.Reason.BODY_TOO_LARGE),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n",
     413, s.Reason.BODY_TOO_LARGE),
    (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
     + b"".join(b"T%d: v\r\n" % i for i in range(7)) + b"\r\n", 431, s.Reason.TOO_MANY_HEADERS),
])
@pytest.mark.parametrize("step", [None, 1, 7])
def test_limits_get_their_answer(data, status, reason, step):
    err, got = error_of(H1ServerCodec(limits=LIMITS), data, step)
    assert (got, err.http_status, err.reason) == (status, status, reason)


def test_slow_header_drip_is_bounded():
    codec = H1ServerCodec(limits=LIMITS)
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\nX: ")
    assert codec.in_headers and codec.awaiting_headers
    for _ in range(600):                     # one never-ending header value, a byte at a time
        events = codec.receive(b"v")
        if events:
            break
    assert isinstance(events[0], s.ConnectionError) and events[0].http_status == 431
    assert codec.bytes_in_headers == 0 or codec.should_close


def test_awaiting_headers_states():
    codec = H1ServerCodec()
    assert codec.awaiting_headers and not codec.in_headers and codec.bytes_in_headers == 0
    codec.receive(b"GET / HTTP/1.1\r\nHo")
    assert codec.in_headers
    codec.receive(b"st: h\r\n\r\n")
    assert not codec.awaiting_headers                 # a response is owed
    answer(codec, 1)
    assert codec.awaiting_headers and not codec.in_headers


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "dup_cl_same": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "dup_cl_diff": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    "cl_list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\nx",
    "cl_sign": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx",
    "te_not_last": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te_unknown": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_identity": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk_size_junk": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
    "chunk_size_negative": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
    "chunk_size_space": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n",
    "chunk_missing_crlf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxx0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    "bare_lf_line": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare_lf_header": b"GET / HTTP/1.1\r\nHost: h\nX: b\r\n\r\n",
    "bare_cr_value": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length : 3\r\n\r\nabc",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad_method": b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    "h2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
@pytest.mark.parametrize("step", [None, 1, 5])
def test_smuggling_and_bad_requests_get_400(name, step):
    err, status = error_of(H1ServerCodec(), SMUGGLING[name], step)
    assert status == 400 == err.http_status
    assert err.reason in (s.Reason.SMUGGLING, s.Reason.BAD_REQUEST)


@pytest.mark.parametrize("data,status", [
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 505),
])
def test_unsupported_versions(data, status):
    assert error_of(H1ServerCodec(), data)[1] == status


def test_connect_refused_when_disabled():
    err, status = error_of(H1ServerCodec(allow_connect=False), b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n")
    assert status == 405


def test_error_in_pipelined_request_waits_for_the_previous_response():
    codec = H1ServerCodec()
    ev = codec.receive(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert [type(e) for e in ev] == [s.RequestHeaders]
    assert codec.data_to_send() == b""               # nothing may jump ahead of response 1
    answer(codec, 1, b"first")
    ev = codec.ready_events()
    assert [type(e) for e in ev] == [s.ConnectionError]
    assert [(r["status"], r["body"][:5]) for r in parse_responses(codec.data_to_send())] == [
        (200, b"first"), (400, b"Bad R")]
    assert codec.should_close


def test_error_mid_body_after_headers_were_delivered():
    codec = H1ServerCodec()
    ev = codec.receive(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nZZ\r\n")
    assert [type(e) for e in ev] == [s.RequestHeaders, s.ConnectionError]   # held piece dropped
    assert parse_responses(codec.data_to_send())[0]["status"] == 400
    codec.send_response(1, 200, [])                   # the proxy raced: ignored, wire owned by the 400
    assert codec.data_to_send() == b""


def test_eof_mid_request_and_half_close():
    codec = H1ServerCodec()
    codec.receive(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    assert codec.receive_eof() == [s.StreamReset(1, s.ErrorCode.CANCEL, True, s.Reason.EOF)]
    assert codec.should_close
    codec = H1ServerCodec()                          # request complete, then half-close: still answered
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert codec.receive_eof() == [] and not codec.should_close
    answer(codec, 1)
    assert codec.should_close and parse_responses(codec.data_to_send())[0]["status"] == 200


def test_drain_closes_after_current_response():
    codec = H1ServerCodec()
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    codec.start_drain()
    answer(codec, 1)
    assert b"connection: close" in codec.data_to_send() and codec.should_close


def test_usage_errors():
    codec = H1ServerCodec()
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(s.CodecUsageError):
        codec.send_response(2, 200, [])
    with pytest.raises(s.CodecUsageError):
        codec.send_data(1, b"x")
    with pytest.raises(s.CodecUsageError):
        codec.send_response(1, 101, [])
