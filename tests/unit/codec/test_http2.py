"""HTTP/2 codecs: the client codec talks to the server codec in memory (and raw h2 plays the
misbehaving peer): multiplexing, flow control with a slow consumer, trailers, RST_STREAM,
GOAWAY, limits and rapid-reset protection."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http2 import PREFACE, H2ClientCodec, H2ServerCodec, H2Settings
from secmesh.sidecar.codec.http2_guard import RapidResetGuard, ResetLimits


class Tick:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pump(client, server, rounds: int = 50) -> tuple[list, list]:
    """Move bytes both ways until quiet; return (server events, client events)."""
    at_server: list = []
    at_client: list = []
    for _ in range(rounds):
        a = client.data_to_send()
        if a:
            at_server += server.receive(a)
        b = server.data_to_send()
        if b:
            at_client += client.receive(b)
        if not a and not b:
            break
    return at_server, at_client


def of(events, cls, sid=None):
    return [e for e in events if isinstance(e, cls) and (sid is None or e.stream_id == sid)]


def data_of(events, sid) -> bytes:
    return b"".join(bytes(e.data) for e in of(events, s.Data, sid))


@pytest.fixture
def pair():
    client, server = H2ClientCodec(), H2ServerCodec()
    pump(client, server)
    return client, server


def test_multiplexed_streams_interleave(pair):
    client, server = pair
    sids = [client.send_request(b"POST", b"svc", b"/s%d" % i, b"https", [(b"x-i", b"%d" % i)])
            for i in range(3)]
    for round_ in range(3):
        for sid in sids:
            client.send_data(sid, b"%d:%d;" % (sid, round_), end_stream=round_ == 2)
    at_server, _ = pump(client, server)
    heads = of(at_server, s.RequestHeaders)
    assert [(h.stream_id, h.path, h.scheme, h.authority, h.http_version) for h in heads] == [
        (1, b"/s0", b"https", b"svc", b"2"), (3, b"/s1", b"https", b"svc", b"2"), (5, b"/s2", b"https", b"svc", b"2")]
    for sid in sids:
        assert data_of(at_server, sid) == b"%d:0;%d:1;%d:2;" % (sid, sid, sid)
        server.acknowledge_received(sid, 6)
    for sid in reversed(sids):                           # answer out of order
        server.send_response(sid, 200, [(b"x-s", b"%d" % sid)], end_stream=False)
        server.send_data(sid, b"resp%d" % sid, end_stream=True)
    _, at_client = pump(client, server)
    assert [e.stream_id for e in of(at_client, s.ResponseHeaders)] == [5, 3, 1]
    for sid in sids:
        assert data_of(at_client, sid) == b"resp%d" % sid
    assert client.open_streams == server.open_streams == 0


def test_grpc_trailers_and_trailers_only(pair):
    client, server = pair
    sid = client.send_request(b"POST", b"svc", b"/pkg.Svc/Call", b"http",
                              [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                               (b"connection", b"keep-alive"), (b"grpc-timeout", b"1S")])
    client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    at_server, _ = pump(client, server)
    head = of(at_server, s.RequestHeaders)[0]
    assert (b"te", b"trailers") in head.headers and (b"grpc-timeout", b"1S") in head.headers
    assert all(n != b"connection" for n, _ in head.headers)          # connection-specific dropped
    server.send_response(sid, 200, [(b"content-type", b"application/grpc")])
    server.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    server.send_trailers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-meta-bin", b"AAE=")])
    _, at_client = pump(client, server)
    assert of(at_client, s.Trailers) == [s.Trailers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b""),
                                                          (b"x-meta-bin", b"AAE=")])]
    sid = client.send_request(b"POST", b"svc", b"/pkg.Svc/Deny", b"http", [], end_stream=True)
    pump(client, server)
    server.send_response(sid, 200, [(b"grpc-status", b"7"), (b"grpc-message", b"denied")], end_stream=True)
    _, at_client = pump(client, server)
    assert of(at_client, s.ResponseHeaders)[0].end_stream
    assert (b"grpc-status", b"7") in of(at_client, s.ResponseHeaders)[0].headers


SMALL = H2Settings(initial_window_size=65535, connection_window=65535)


def test_slow_consumer_holds_the_producer_back():
    client, server = H2ClientCodec(), H2ServerCodec(SMALL)
    pump(client, server)
    sid = client.send_request(b"POST", b"svc", b"/up", b"http", [])
    body = bytes(range(256)) * 1200                          # 307,200 bytes
    client.send_data(sid, body, end_stream=True)
    received = b""
    for _ in range(5):                                       # consumer reads nothing: no progress
        at_server, _ = pump(client, server)
        received += data_of(at_server, sid)
    assert len(received) == 65535                            # exactly one window, no more
    assert client.buffered(sid) == len(body) - 65535        # the rest waits at the producer
    writable = []
    ended = False
    while not ended:                                         # consume slowly, 16 KiB at a time
        server.acknowledge_received(sid, 16384)
        at_server, at_client = pump(client, server)
        received += data_of(at_server, sid)
        writable += of(at_client, s.StreamWritable)
        ended = any(e.end_stream for e in of(at_server, s.Data, sid))
        assert len(received) - 16384 * 0 <= len(body)
    assert received == body and client.buffered(sid) == 0
    assert writable == [s.StreamWritable(sid)]


def test_response_direction_is_flow_controlled_too():
    client, server = H2ClientCodec(SMALL), H2ServerCodec()
    pump(client, server)
    sid = client.send_request(b"GET", b"svc", b"/down", b"http", [], end_stream=True)
    pump(client, server)
    server.send_response(sid, 200, [])
    server.send_data(sid, b"x" * 200_000, end_stream=True)
    _, at_client = pump(client, server)
    assert len(data_of(at_client, sid)) == 65535 and server.buffered(sid) == 200_000 - 65535
    client.acknowledge_received(sid, 200_000)                # over-acknowledging is clamped
    _, at_client = pump(client, server)
    assert len(data_of(at_client, sid)) == 65535


def test_reset_releases_the_connection_window():
    client, server = H2ClientCodec(), H2ServerCodec(SMALL)
    pump(client, server)
    a = client.send_request(b"POST", b"svc", b"/a", b"http", [])
    client.send_data(a, b"x" * 65535)
    pump(client, server)                                     # connection window now exhausted
    client.reset_stream(a, s.ErrorCode.CANCEL)
    at_server, _ = pump(client, server)
    assert of(at_server, s.StreamReset) == [s.StreamReset(a, s.ErrorCode.CANCEL, True)]
    b = client.send_request(b"POST", b"svc", b"/b", b"http", [])
    client.send_data(b, b"y" * 1000, end_stream=True)        # flows: the dead stream's bytes came back
    at_server, _ = pump(client, server)
    assert data_of(at_server, b) == b"y" * 1000


def test_server_reset_reaches_the_client(pair):
    client, server = pair
    sid = client.send_request(b"GET", b"svc", b"/", b"http", [], end_stream=True)
    pump(client, server)
    server.reset_stream(sid, s.ErrorCode.REFUSED_STREAM)
    _, at_client = pump(client, server)
    assert of(at_client, s.StreamReset) == [s.StreamReset(sid, s.ErrorCode.REFUSED_STREAM, True)]


def test_graceful_goaway_lets_open_streams_finish():
    client, server = H2ClientCodec(), H2ServerCodec()
    pump(client, server)
    first = client.send_request(b"POST", b"svc", b"/long", b"http", [])
    pump(client, server)
    late = client.send_request(b"GET", b"svc", b"/late", b"http", [], end_stream=True)
    server.start_drain()                                     # GOAWAY(last=first) crosses `late`
    at_server, at_client = pump(client, server)
    assert of(at_client, s.GoAway) == [s.GoAway(first, 0)]
    assert s.StreamReset(late, s.ErrorCode.REFUSED_STREAM, True, s.Reason.PEER_GOAWAY) in at_client
    assert not client.can_open_stream
    assert not server.should_close                           # `first` still open
    client.send_data(first, b"rest", end_stream=True)        # both directions keep working
    server.send_response(first, 200, [])
    server.send_data(first, b"done", end_stream=True)
    at_server, at_client = pump(client, server)
    assert data_of(at_server, first) == b"rest" and data_of(at_client, first) == b"done"
    assert server.should_close and client.should_close


def raw_client(**settings) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def raw_pump(conn, server) -> tuple[list, list]:
    at_server, at_client = [], []
    for _ in range(20):
        a = conn.data_to_send()
        if a:
            at_server += server.receive(a)
        b = server.data_to_send()
        if b:
            at_client += conn.receive_data(b)
        if not a and not b:
            break
    return at_server, at_client


REQ = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")]


def test_streams_over_max_concurrent_are_refused_not_fatal():
    server = H2ServerCodec(H2Settings(max_concurrent_streams=2))
    conn = raw_client()
    raw_pump(conn, server)
    assert conn.remote_settings.max_concurrent_streams == 2
    conn.remote_settings.max_concurrent_streams = 10       # a peer that ignores our limit
    conn.remote_settings.acknowledge()
    for sid in (1, 3, 5):
        conn.send_headers(sid, REQ, end_stream=True)
    at_server, at_client = raw_pump(conn, server)
    assert [e.stream_id for e in of(at_server, s.RequestHeaders)] == [1, 3]
    assert of(at_server, s.StreamReset) == [s.StreamReset(5, s.ErrorCode.REFUSED_STREAM, False, s.Reason.REFUSED)]
    resets = [e for e in at_client if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(5, s.ErrorCode.REFUSED_STREAM)]
    assert not server.should_close


def test_oversized_header_list_gets_431():
    server = H2ServerCodec(H2Settings(max_header_list_size=4096))
    conn = raw_client()
    raw_pump(conn, server)
    conn.send_headers(1, REQ + [(b"x-big", b"v" * 5000)], end_stream=True)
    conn.send_headers(3, REQ, end_stream=True)
    at_server, at_client = raw_pump(conn, server)
    assert [e.stream_id for e in of(at_server, s.RequestHeaders)] == [3]
    [resp] = [e for e in at_client if isinstance(e, h2.events.ResponseReceived)]
    assert resp.stream_id == 1 and dict(resp.headers)[b":status"] == b"431"


def _reset_loop(one_round) -> tuple[H2ServerCodec, list, list, int]:
    """Run `one_round(conn, sid)` per new stream until the server (limit 50) gives up."""
    server = H2ServerCodec(H2Settings(resets=ResetLimits(limit=50, window=10.0)), clock=Tick())
    conn = raw_client()
    raw_pump(conn, server)
    seen: list = []
    for i in range(200):
        at_server, at_client = one_round(conn, server, 1 + 2 * i)
        seen += at_server
        if server.should_close:
            break
    return server, seen, at_client, i


def test_rapid_reset_is_cut_off():
    def round_(conn, server, sid):
        conn.send_headers(sid, REQ, end_stream=False)
        conn.reset_stream(sid, 8)
        return raw_pump(conn, server)

    server, seen, at_client, i = _reset_loop(round_)
    errors = of(seen, s.ConnectionError)
    assert errors and errors[0].reason == s.Reason.RAPID_RESET
    assert i <= 51                                          # tripped right above the limit
    goaway = [e for e in at_client if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == s.ErrorCode.ENHANCE_YOUR_CALM
    assert server.receive(b"\x00" * 9) == []                # dead: input ignored


def _window_overflow(conn, sid: int) -> None:
    """A WINDOW_UPDATE that overflows the stream's window: h2 answers with RST_STREAM itself."""
    from hyperframe.frame import WindowUpdateFrame
    f = WindowUpdateFrame(sid)
    f.window_increment = 2 ** 31 - 1
    conn._data_to_send += f.serialize()          # noqa: SLF001 - raw h2 would refuse to send it


def _data_after_end(conn, sid: int) -> None:
    """DATA on a stream the client already ended: h2 resets the stream (STREAM_CLOSED)."""
    from hyperframe.frame import DataFrame
    f = DataFrame(sid)
    f.data = b"x"
    conn._data_to_send += f.serialize()          # noqa: SLF001 - raw h2 would refuse to send it


@pytest.mark.parametrize("provoke", [_window_overflow, _data_after_end])
def test_resets_the_client_provokes_count_as_rapid_resets(provoke):
    """MadeYouReset (CVE-2025-8671): instead of sending RST_STREAM, the client makes the server
    reset each stream with a stream-level protocol error. Those resets cut the proxy's work
    short just the same, so they count against the same limit."""
    def round_(conn, server, sid):
        conn.send_headers(sid, REQ, end_stream=provoke is _data_after_end)
        first, _ = raw_pump(conn, server)        # the request reaches the proxy: work starts …
        provoke(conn, sid)
        at_server, at_client = raw_pump(conn, server)   # … and the server has to reset it
        return first + at_server, at_client

    _, seen, _, i = _reset_loop(round_)
    errors = of(seen, s.ConnectionError)
    assert errors and errors[0].reason == s.Reason.RAPID_RESET
    assert i <= 51


def test_open_and_cancel_in_one_read_never_reaches_the_proxy():
    server = H2ServerCodec()
    conn = raw_client()
    raw_pump(conn, server)
    conn.send_headers(1, REQ, end_stream=False)
    conn.reset_stream(1, 8)
    at_server, _ = raw_pump(conn, server)
    assert at_server == []


def test_normal_traffic_with_some_cancellations_does_not_trip():
    tick = Tick()
    client, server = H2ClientCodec(), H2ServerCodec(H2Settings(resets=ResetLimits(limit=20, window=10.0)),
                                                    clock=tick)
    pump(client, server)
    for i in range(600):
        tick.t += 0.01
        sid = client.send_request(b"GET", b"svc", b"/", b"http", [], end_stream=True)
        pump(client, server)
        if i % 5 == 0:                                      # 20 % cancelled by deadline
            client.reset_stream(sid)
        else:
            server.send_response(sid, 200, [], end_stream=True)
        at_server, _ = pump(client, server)
        assert not of(at_server, s.ConnectionError)
    assert not server.should_close


def test_guard_window_slides():
    tick = Tick()
    guard = RapidResetGuard(ResetLimits(limit=3, window=2.0, ratio=0.5), clock=tick)
    for _ in range(3):
        guard.opened()
        assert not guard.premature_reset()
    tick.t += 5                                             # old resets fall out of the window
    guard.opened()
    assert not guard.premature_reset() and guard.counts == (1, 1)
    for _ in range(3):
        guard.opened()
        tripped = guard.premature_reset()
    assert tripped


def test_guard_ratio_keeps_busy_clients_alive():
    guard = RapidResetGuard(ResetLimits(limit=3, window=10.0, ratio=0.5), clock=Tick())
    for _ in range(100):
        guard.opened()
    assert not any(guard.premature_reset() for _ in range(10))   # 10 % of streams


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\n\r\n",                              # not a preface
    PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # DATA on stream 0
    PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x08\x06\x00\x00\x00\x00\x01",  # bad PING length
])
def test_protocol_errors_are_connection_errors(garbage):
    server = H2ServerCodec()
    events = server.receive(garbage)
    assert [type(e) for e in events] == [s.ConnectionError]
    assert events[0].reason == s.Reason.PROTOCOL_ERROR and server.should_close
    assert server.data_to_send()                            # SETTINGS + GOAWAY for the peer


def test_eof_resets_open_streams(pair):
    client, server = pair
    sid = client.send_request(b"GET", b"svc", b"/", b"http", [], end_stream=True)
    pump(client, server)
    assert server.receive_eof() == [s.StreamReset(sid, s.ErrorCode.CANCEL, True, s.Reason.EOF)]
    assert server.should_close


def test_request_event_fields_and_host_fallback():
    server = H2ServerCodec()
    conn = raw_client()
    raw_pump(conn, server)
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p"),
                          (b"host", b"h.example"), (b"cookie", b"a=1"), (b"cookie", b"b=2")], end_stream=True)
    [head] = raw_pump(conn, server)[0]
    assert head.authority == b"h.example" and head.end_stream
    assert head.headers == [(b"cookie", b"a=1; b=2")]              # h2 joins crumbs (RFC 9113 §8.2.3)


def test_expect_100_continue_over_h2(pair):
    client, server = pair
    sid = client.send_request(b"PUT", b"svc", b"/f", b"https", [(b"expect", b"100-continue")])
    at_server, _ = pump(client, server)
    assert (b"expect", b"100-continue") in of(at_server, s.RequestHeaders)[0].headers
    server.send_informational(sid, 100)
    _, at_client = pump(client, server)
    assert at_client == [s.InformationalResponse(sid, 100, [])]
    with pytest.raises(s.CodecUsageError):
        server.send_informational(sid, 101)


def test_peer_error_goaway_resets_open_streams(pair):
    client, server = pair
    sid = client.send_request(b"GET", b"svc", b"/", b"http", [], end_stream=True)
    pump(client, server)
    server._goaway(0, s.ErrorCode.INTERNAL_ERROR)             # the upstream dies with an error
    _, at_client = pump(client, server)
    assert s.GoAway(0, s.ErrorCode.INTERNAL_ERROR) in at_client
    assert s.StreamReset(sid, s.ErrorCode.INTERNAL_ERROR, True, s.Reason.PEER_GOAWAY) in at_client
    assert of(at_client, s.ConnectionError) and client.should_close


def test_control_replies_are_counted_and_cut_ends_the_connection():
    """The codec counts the PING and SETTINGS it had h2 acknowledge (the proxy's flood guard
    compares that count against what the peer read); `cut` ends the connection calmly-please."""
    server = H2ServerCodec()
    conn = raw_client()
    raw_pump(conn, server)
    base = server.control_replies
    for i in range(3):
        conn.ping(b"%08d" % i)
    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 5})
    raw_pump(conn, server)
    assert server.control_replies == base + 4
    server.cut(s.Reason.CONTROL_FLOOD, "test")
    errors = of(server.ready_events(), s.ConnectionError)
    assert [e.reason for e in errors] == [s.Reason.CONTROL_FLOOD] and server.should_close
    goaway = [e for e in conn.receive_data(server.data_to_send()) if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == s.ErrorCode.ENHANCE_YOUR_CALM
