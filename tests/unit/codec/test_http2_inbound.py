"""What the HTTP/2 codec does instead of h2 per received stream (http2_inbound.py):

- the one-pass inbound header check refuses what h2 refused, through the codec, with the
  outcome a peer saw before (GOAWAY(PROTOCOL_ERROR), same last stream id, nothing surfaces);
- open streams are counted in O(1) by keeping only open streams in `conn.streams`: the count
  is exact, memory stays bounded, late frames on closed streams behave as h2 has them, and
  every private h2 name this relies on is pinned here."""

from __future__ import annotations

import inspect

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.stream import StreamClosedBy, StreamState
from h2.utilities import HeaderValidationFlags, SizeLimitDict, validate_headers

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http2 import H2ClientCodec, H2ServerCodec, H2Settings
from secmesh.sidecar.codec.http2_guard import ResetLimits
from secmesh.sidecar.codec.http2_inbound import (
    REQUEST, RESPONSE, TRAILERS, ReapingH2Connection, inbound_problem,
)
from tests.unit.codec.test_http2_fastpath import exchange, lax, of

GOOD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")]
FLAGS = {REQUEST: HeaderValidationFlags(False, False, False, False),
         RESPONSE: HeaderValidationFlags(True, False, True, False),
         TRAILERS: HeaderValidationFlags(False, True, False, False)}


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


# === the check itself, rule by rule, against h2's answer ===

CASES = [
    (REQUEST, GOOD, True),
    (REQUEST, GOOD + [(b"te", b"Trailers")], True),
    (REQUEST, GOOD + [(b"te", b"gzip")], False),
    (REQUEST, GOOD + [(b"host", b"svc")], True),
    (REQUEST, GOOD + [(b"host", b"other")], False),
    (REQUEST, GOOD + [(b"host", b"svc"), (b"host", b"svc")], False),
    (REQUEST, GOOD[:3] + [(b":path", b"")], False),
    (REQUEST, GOOD + [(b":status", b"200")], False),
    (REQUEST, GOOD + [(b":protocol", b"websocket")], False),
    (REQUEST, [(b":method", b"CONNECT"), (b":authority", b"svc:443")], True),
    (REQUEST, [(b":method", b"CONNECT"), (b":authority", b"svc:443"), (b":path", b"/")], False),
    (REQUEST, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
               (b":authority", b"svc"), (b":path", b"/chat")], True),
    (REQUEST, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"svc")], False),
    (REQUEST, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"svc")], True),
    (REQUEST, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")], False),
    (REQUEST, GOOD + [(b"x-a", b"")], True),
    (REQUEST, GOOD + [(b"x-a", b"a\x00b")], False),
    (REQUEST, GOOD + [(b"x-a", b"a\t")], False),
    (REQUEST, GOOD + [(b"", b"a")], False),
    (REQUEST, GOOD + [(b"x\x7f", b"a")], False),
    (REQUEST, GOOD + [(b"proxy-connection", b"a")], False),
    (REQUEST, [(b":method", b" GET")] + GOOD[1:], False),
    (RESPONSE, [(b":status", b"200"), (b"host", b"a"), (b"host", b"b")], True),
    (RESPONSE, [(b":status", b"200"), (b":status", b"200")], False),
    (RESPONSE, [(b":status", b"200"), (b":protocol", b"x")], False),
    (RESPONSE, [(b":status", b"103"), (b"link", b"</a>")], True),
    (RESPONSE, [(b"content-type", b"x")], False),
    (TRAILERS, [(b"grpc-status", b"0")], True),
    (TRAILERS, [], True),
    (TRAILERS, [(b":status", b"200")], False),
    (TRAILERS, [(b"grpc-status", b"0"), (b":status", b"200")], False),
    (TRAILERS, [(b"upgrade", b"h2c")], False),
]


@pytest.mark.parametrize("kind,headers,accepted", CASES)
def test_each_rule_matches_h2(kind, headers, accepted):
    try:
        list(validate_headers(headers, FLAGS[kind]))
        h2_accepted = True
    except ProtocolError:
        h2_accepted = False
    assert h2_accepted is accepted                     # the table itself is right
    assert (inbound_problem(headers, kind) is None) is accepted


def test_the_memo_keeps_no_secrets_and_no_big_values():
    from secmesh.sidecar.codec import http2_inbound
    http2_inbound._GOOD.clear()
    block = GOOD + [(b"authorization", b"Bearer t"), (b"cookie", b"a=1"), (b"x-big", b"v" * 200),
                    hpack.NeverIndexedHeaderTuple(b"x-secret", b"s"), (b"x-a", b"1")]
    assert inbound_problem(block, REQUEST) is None
    assert http2_inbound._GOOD == {(b"x-a", b"1"), (b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", b"svc")}          # never a :path


# === through the codec: the peer sees what it saw when h2 refused the block ===

def stock_goaway(raw: bytes) -> h2.events.ConnectionTerminated:
    """What stock h2 (inbound validation on) answered to the same bytes."""
    stock = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    stock.initiate_connection()
    with pytest.raises(ProtocolError):
        stock.receive_data(raw)
    peer = lax(client_side=True)
    peer.data_to_send()
    return of(peer.receive_data(stock.data_to_send()), h2.events.ConnectionTerminated)[0]


def test_a_malformed_block_in_a_busy_read_ends_the_connection_as_h2_did():
    peer, server = lax(client_side=True), H2ServerCodec()
    exchange(peer, server)
    preface = lax(client_side=True).data_to_send()
    peer.send_headers(1, GOOD, end_stream=True)                      # fine
    peer.send_headers(3, GOOD + [(b"x-A", b"1")], end_stream=True)   # upper case
    peer.send_headers(5, GOOD, end_stream=True)                      # after it, same read
    raw = peer.data_to_send()
    events = server.receive(raw)
    assert [type(e) for e in events] == [s.ConnectionError]          # nothing else surfaces
    assert events[0].reason == s.Reason.PROTOCOL_ERROR and "x-A" in events[0].detail
    goaway = of(peer.receive_data(server.data_to_send()), h2.events.ConnectionTerminated)
    assert [(g.error_code, g.last_stream_id) for g in goaway] == [(ErrorCodes.PROTOCOL_ERROR, 3)]
    expected = stock_goaway(preface + raw)
    assert (expected.error_code, expected.last_stream_id) == (ErrorCodes.PROTOCOL_ERROR, 3)
    assert server.should_close and not server.receive(frame(6, 0, 0, b"12345678"))


def test_malformed_request_trailers_end_the_connection():
    peer, server = lax(client_side=True), H2ServerCodec()
    exchange(peer, server)
    peer.send_headers(1, GOOD)
    exchange(peer, server)
    peer.send_headers(1, [(b"grpc-status", b"0"), (b"connection", b"close")], end_stream=True)
    at_server, at_peer = exchange(peer, server)
    assert not of(at_server, s.Trailers)
    assert [e.reason for e in of(at_server, s.ConnectionError)] == [s.Reason.PROTOCOL_ERROR]
    assert [g.error_code for g in of(at_peer, h2.events.ConnectionTerminated)] == [ErrorCodes.PROTOCOL_ERROR]


def test_a_malformed_informational_response_ends_the_connection():
    peer, client = lax(client_side=False), H2ClientCodec()
    sid = client.send_request(b"POST", b"svc", b"/", b"https", [])
    exchange(peer, client)
    peer.send_headers(sid, [(b":status", b"100"), (b"X-Upper", b"1")])
    at_client, _ = exchange(peer, client)
    assert not of(at_client, s.InformationalResponse)
    assert [e.reason for e in of(at_client, s.ConnectionError)] == [s.Reason.PROTOCOL_ERROR]


@pytest.mark.parametrize("status", [b"abc", b"20", b"2000", b"+20", b"2_0", b"\xd9\xa0\xd9",
                                    b"1ab", b"10", b"1000", b"1_0"])
def test_a_status_that_is_not_three_digits_ends_the_connection(status):
    """One rule more than h2 (which passes any :status on): the codec reads it as an int.
    A status starting with 1 is taken for an informational response by h2."""
    peer, client = lax(client_side=False), H2ClientCodec()
    sid = client.send_request(b"GET", b"svc", b"/", b"https", [], end_stream=True)
    exchange(peer, client)
    peer.send_headers(sid, [(b":status", status)], end_stream=not status.startswith(b"1"))
    at_client, _ = exchange(peer, client)
    assert [type(e) for e in at_client] == [s.ConnectionError]


def test_valid_blocks_of_every_kind_still_pass():
    peer, client = lax(client_side=False), H2ClientCodec()
    sid = client.send_request(b"POST", b"svc", b"/g.S/M", b"http", [(b"te", b"trailers")])
    exchange(peer, client)
    peer.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>")])
    peer.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    peer.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    at_client, _ = exchange(peer, client)
    assert [type(e) for e in at_client] == [s.InformationalResponse, s.ResponseHeaders, s.Trailers]


# === O(1) open-stream counting: exact, bounded, late frames as before ===

def pinned_count(conn) -> int:
    """h2's own walk over every stream: the reference for our count."""
    return h2.connection.H2Connection._open_streams(conn, 1)


def test_ten_thousand_streams_leave_nothing_behind():
    client, server = H2ClientCodec(), H2ServerCodec()
    exchange(_CodecPeer(client), server)
    for _ in range(1000):
        sids = [client.send_request(b"GET", b"svc", b"/", b"http", [], end_stream=True) for _ in range(10)]
        for e in server.receive(client.data_to_send()):
            if isinstance(e, s.RequestHeaders):
                server.send_response(e.stream_id, 200, [], end_stream=False)
                server.send_data(e.stream_id, b"ok", end_stream=True)
        for e in client.receive(server.data_to_send()):
            if isinstance(e, s.Data) and e.data:
                client.acknowledge_received(e.stream_id, len(e.data))
        server.receive(client.data_to_send())
        assert len(server._h2.streams) == 0 and len(client._h2.streams) == 0
    assert sids[-1] == 19999
    assert server.open_streams == client.open_streams == 0
    assert len(server._h2._closed_streams) <= h2.connection.H2Connection.MAX_CLOSED_STREAMS


class _CodecPeer:
    """Lets `exchange` drive a client codec as the peer of a server codec."""

    def __init__(self, codec) -> None:
        self.codec = codec

    def data_to_send(self) -> bytes:
        return self.codec.data_to_send()

    def receive_data(self, data: bytes) -> list:
        return self.codec.receive(data)


def test_the_count_is_exact_through_every_way_a_stream_ends():
    client, server = H2ClientCodec(), H2ServerCodec()
    exchange(_CodecPeer(client), server)
    conns = (client._h2, server._h2)

    def check() -> None:
        for conn in conns:
            assert all(st.state_machine.state is not StreamState.CLOSED for st in conn.streams.values())
            count = conn.open_inbound_streams + conn.open_outbound_streams
            assert len(conn.streams) == pinned_count(conn) == count

    sids = [client.send_request(b"POST", b"svc", b"/", b"http", []) for _ in range(8)]
    exchange(_CodecPeer(client), server)
    check()
    assert len(server._h2.streams) == 8
    client.reset_stream(sids[0])                               # reset by the client
    server.reset_stream(sids[1])                               # reset by the server
    client.send_data(sids[2], b"x", end_stream=True)           # half-closed
    server.send_response(sids[3], 200, [], end_stream=True)    # answered before the request ended
    client.send_data(sids[4], b"", end_stream=True)
    server.send_response(sids[4], 200, [], end_stream=True)    # both ends: done
    client.send_trailers(sids[5], [(b"x-t", b"1")])
    server.send_response(sids[5], 200, [])
    server.send_trailers(sids[5], [(b"grpc-status", b"0")])    # trailers both ways
    exchange(_CodecPeer(client), server)
    check()
    assert sorted(server._h2.streams) == [sids[2], sids[3], sids[6], sids[7]]
    assert server._h2._closed_streams[sids[0]] is StreamClosedBy.RECV_RST_STREAM
    assert server._h2._closed_streams[sids[1]] is StreamClosedBy.SEND_RST_STREAM
    assert server._h2._closed_streams[sids[4]] is StreamClosedBy.RECV_END_STREAM
    assert client._h2._closed_streams[sids[4]] is StreamClosedBy.RECV_END_STREAM


def test_late_frames_on_closed_streams_behave_as_in_h2():
    peer, server = lax(client_side=True), H2ServerCodec()
    exchange(peer, server)
    peer.send_headers(1, GOOD, end_stream=True)
    peer.send_headers(3, GOOD)
    exchange(peer, server)
    server.send_response(1, 200, [], end_stream=True)         # 1 closed by END_STREAM
    server.reset_stream(3)                                     # 3 closed by RST_STREAM
    exchange(peer, server)
    assert not server._h2.streams
    # WINDOW_UPDATE and RST_STREAM on a closed stream are ignored (RFC 9113 §5.1) ...
    events = server.receive(frame(8, 0, 1, (10).to_bytes(4, "big")) + frame(3, 0, 1, bytes(4)))
    assert not events and not server.data_to_send()
    # ... DATA on one costs that stream a RST_STREAM(STREAM_CLOSED), the connection lives ...
    for sid in (1, 3):
        assert not server.receive(frame(0, 0, sid, b"late"))
        assert frame(3, 0, sid, (ErrorCodes.STREAM_CLOSED).to_bytes(4, "big")) in server.data_to_send()
    # ... and HEADERS on a stream closed by END_STREAM is a connection error STREAM_CLOSED.
    events = server.receive(frame(1, 5, 1, hpack.Encoder().encode(GOOD)))
    assert [e.reason for e in of(events, s.ConnectionError)] == [s.Reason.PROTOCOL_ERROR]
    goaway = of(peer.receive_data(server.data_to_send()), h2.events.ConnectionTerminated)
    assert goaway[0].error_code == ErrorCodes.STREAM_CLOSED


def test_the_hard_stream_limit_still_holds_within_one_read():
    server = H2ServerCodec(H2Settings(max_concurrent_streams=5))     # h2 stops at 10
    peer = lax(client_side=True)                                     # still believes 100
    for sid in range(1, 23, 2):                                      # 11 streams, one read
        peer.send_headers(sid, GOOD)
    events = server.receive(peer.data_to_send())
    assert [e.reason for e in of(events, s.ConnectionError)] == [s.Reason.PROTOCOL_ERROR]
    assert not of(events, s.RequestHeaders)


def test_streams_opened_and_reset_in_one_read_are_not_counted():
    """Rapid reset in one read: the exact count keeps h2's hard limit out of it, and our guard
    (not a TooManyStreams protocol error) answers, as before."""
    server = H2ServerCodec(H2Settings(max_concurrent_streams=5, resets=ResetLimits(limit=20)))
    peer = lax(client_side=True)
    for sid in range(1, 61, 2):                                      # 30 opened and reset
        peer.send_headers(sid, GOOD)
        peer.reset_stream(sid)
    events = server.receive(peer.data_to_send())
    assert [e.reason for e in of(events, s.ConnectionError)] == [s.Reason.RAPID_RESET]


# === pins: the private h2 names the reaping relies on ===

def test_h2_counts_through_open_streams_before_every_new_stream():
    calls: list[int] = []

    class Spy(ReapingH2Connection):
        def _open_streams(self, remainder: int) -> int:
            calls.append(remainder)
            return super()._open_streams(remainder)

    server = Spy(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    client = lax(client_side=True)
    client.send_headers(1, GOOD, end_stream=True)
    server.receive_data(client.data_to_send())
    assert calls == [1], "h2 no longer counts inbound streams via _open_streams"
    assert server.open_inbound_streams == 1 and server.open_outbound_streams == 0
    client_conn = Spy(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client_conn.initiate_connection()
    calls.clear()
    client_conn.send_headers(1, GOOD)
    assert calls == [1], "h2 no longer counts outbound streams via _open_streams"


def test_the_private_h2_state_we_move_streams_by_is_there():
    conn = ReapingH2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    assert isinstance(conn.streams, dict)
    assert isinstance(conn._closed_streams, SizeLimitDict)
    assert conn._closed_streams._size_limit == h2.connection.H2Connection.MAX_CLOSED_STREAMS
    assert "remainder" in inspect.signature(h2.connection.H2Connection._open_streams).parameters
    assert list(inspect.signature(h2.connection.H2Connection._receive_frame).parameters) == ["self", "frame"]
    src = inspect.getsource(h2.connection.H2Connection.receive_data)
    assert "self._receive_frame(frame)" in src, "h2 no longer funnels every frame through _receive_frame"
    src = inspect.getsource(h2.connection.H2Connection._open_streams)
    assert "stream.open" in src and "self._closed_streams[stream_id] = stream.closed_by" in src
    assert inspect.getsource(h2.stream.H2Stream.closed.fget).count("StreamState.CLOSED") == 1
    assert "state_machine.state" in inspect.getsource(h2.stream.H2Stream.closed.fget)


@pytest.mark.parametrize("name", ["send_headers", "send_data", "end_stream", "reset_stream"])
def test_our_overrides_keep_h2s_signatures(name):
    ours = inspect.signature(getattr(ReapingH2Connection, name))
    theirs = inspect.signature(getattr(h2.connection.H2Connection, name))
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]
