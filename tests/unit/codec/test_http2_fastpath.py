"""The HTTP/2 header fast path: h2's outbound normalization/validation and inbound cookie
normalization are off (http2_headers.py does the outbound part in one pass), so these pin
that (1) a malformed header block from a peer is still refused, both ways, and (2) what we
send stays valid: lower-case names, no connection-specific fields, pseudo-headers first and
only ours, `te` only as trailers, values trimmed, secrets never indexed."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http2 import H2ClientCodec, H2ServerCodec
from secmesh.sidecar.codec.http2_headers import outbound_fields

GOOD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")]


def lax(client_side: bool) -> h2.connection.H2Connection:
    """A raw h2 peer that sends whatever it is told (its own checks off) and keeps what it
    receives untouched (never-indexed flags, cookie crumbs)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client_side, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False, normalize_inbound_headers=False))
    conn.initiate_connection()
    return conn


def exchange(peer, codec, rounds: int = 10) -> tuple[list, list]:
    at_codec, at_peer = [], []
    for _ in range(rounds):
        a = peer.data_to_send()
        if a:
            at_codec += codec.receive(a)
        b = codec.data_to_send()
        if b:
            at_peer += peer.receive_data(b)
        if not a and not b:
            break
    return at_codec, at_peer


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


MALFORMED_REQUESTS = {
    "uppercase name": GOOD + [(b"X-Upper", b"1")],
    "connection-specific": GOOD + [(b"connection", b"keep-alive")],
    "transfer-encoding": GOOD + [(b"transfer-encoding", b"chunked")],
    "te other than trailers": GOOD + [(b"te", b"gzip")],
    "unknown pseudo-header": GOOD + [(b":foo", b"bar")],
    "pseudo after regular": GOOD[:3] + [(b"x-a", b"1"), (b":path", b"/")],
    "duplicate pseudo": GOOD + [(b":path", b"/again")],
    "missing :path": GOOD[:3],
    "response pseudo in request": GOOD + [(b":status", b"200")],
    "empty :path": GOOD[:3] + [(b":path", b"")],
    "CR in value": GOOD + [(b"x-a", b"a\rb")],
    "colon in name": GOOD + [(b"x:a", b"1")],
    "value with surrounding space": GOOD + [(b"x-a", b" a")],
    "authority and host differ": GOOD + [(b"host", b"other")],
}


@pytest.mark.parametrize("headers", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_server_refuses_a_malformed_request_block(headers):
    peer, server = lax(client_side=True), H2ServerCodec()
    exchange(peer, server)
    peer.send_headers(1, headers, end_stream=True)
    at_server, at_peer = exchange(peer, server)
    assert not of(at_server, s.RequestHeaders)             # nothing reaches the proxy
    assert [e.reason for e in of(at_server, s.ConnectionError)] == [s.Reason.PROTOCOL_ERROR]
    goaway = of(at_peer, h2.events.ConnectionTerminated)
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert server.should_close


MALFORMED_RESPONSES = {
    "uppercase name": [(b":status", b"200"), (b"Content-Type", b"text/plain")],
    "connection-specific": [(b":status", b"200"), (b"keep-alive", b"timeout=5")],
    "request pseudo in response": [(b":status", b"200"), (b":path", b"/")],
    "missing :status": [(b"content-type", b"text/plain")],
}


@pytest.mark.parametrize("headers", MALFORMED_RESPONSES.values(), ids=MALFORMED_RESPONSES.keys())
def test_client_refuses_a_malformed_response_block(headers):
    peer, client = lax(client_side=False), H2ClientCodec()
    sid = client.send_request(b"GET", b"svc", b"/", b"https", [], end_stream=True)
    exchange(peer, client)
    peer.send_headers(sid, headers, end_stream=True)
    at_client, _ = exchange(peer, client)
    assert not of(at_client, s.ResponseHeaders)
    assert [e.reason for e in of(at_client, s.ConnectionError)] == [s.Reason.PROTOCOL_ERROR]


def test_pseudo_header_in_trailers_is_refused():
    peer, client = lax(client_side=False), H2ClientCodec()
    sid = client.send_request(b"POST", b"svc", b"/g.S/M", b"http", [(b"te", b"trailers")])
    exchange(peer, client)
    peer.send_headers(sid, [(b":status", b"200")])
    peer.send_headers(sid, [(b"grpc-status", b"0"), (b":status", b"200")], end_stream=True)
    at_client, _ = exchange(peer, client)
    assert not of(at_client, s.Trailers)
    assert of(at_client, s.ConnectionError)


def test_cookie_crumbs_are_joined_for_the_proxy():
    peer, server = lax(client_side=True), H2ServerCodec()
    exchange(peer, server)
    peer.send_headers(1, GOOD + [(b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2")], end_stream=True)
    at_server, _ = exchange(peer, server)
    (req,) = of(at_server, s.RequestHeaders)
    assert req.headers == [(b"x-a", b"1"), (b"cookie", b"a=1; b=2")]
    assert isinstance(req.headers[-1], NeverIndexedHeaderTuple)


def sent_by_server(headers, trailers=None):
    peer, server = lax(client_side=True), H2ServerCodec()
    exchange(peer, server)
    peer.send_headers(1, GOOD, end_stream=True)
    exchange(peer, server)
    server.send_response(1, 200, headers, end_stream=trailers is None)
    if trailers is not None:
        server.send_trailers(1, trailers)
    _, at_peer = exchange(peer, server)
    return ([e.headers for e in of(at_peer, h2.events.ResponseReceived)][0],
            [e.headers for e in of(at_peer, h2.events.TrailersReceived)])


def test_what_we_send_is_normalized_like_h2_did():
    head, (trailers,) = sent_by_server(
        [(b"Content-Type", b" text/plain "), (b"connection", b"close"), (b"keep-alive", b"1"),
         (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"), (b"host", b"h"), (b":path", b"/x"),
         (b"te", b"gzip"), (b"x-b", b"2")],
        [(b"grpc-status", b"0"), (b":status", b"500"), (b"TE", b"Trailers")])
    assert head == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-b", b"2")]
    assert trailers == [(b"grpc-status", b"0"), (b"te", b"trailers")]


def test_secrets_and_unique_ids_are_never_indexed_and_peer_flags_kept():
    head, _ = sent_by_server([(b"authorization", b"Bearer x" * 4), (b"cookie", b"short=1"),
                              (b"cookie", b"long-enough-cookie=1234567890"), (b"x-request-id", b"r1"),
                              NeverIndexedHeaderTuple(b"x-peer-secret", b"s"), HeaderTuple(b"x-plain", b"p")])
    never = {h[0] for h in head if isinstance(h, NeverIndexedHeaderTuple)}
    assert never == {b"authorization", b"x-request-id", b"x-peer-secret", b"cookie"}
    assert [h for h in head if h[0] == b"cookie" and not isinstance(h, NeverIndexedHeaderTuple)] == [
        (b"cookie", b"long-enough-cookie=1234567890")]


@pytest.mark.parametrize("bad", [(b"x a", b"1"), (b"x\x7f", b"1"), (b"", b"1"), (b"x-a", b"a\nb"),
                                 (b"x-a", b"a\x00b"), (b"x\xe9", b"1")])
def test_we_refuse_to_send_an_invalid_field(bad):
    with pytest.raises(s.CodecUsageError):
        outbound_fields([bad], [])


def test_request_pseudo_headers_are_checked_by_us():
    client = H2ClientCodec()
    with pytest.raises(s.CodecUsageError):
        client.send_request(b"GET", b"svc", b"", b"https", [])
    assert client.open_streams == 0
    sid = client.send_request(b"CONNECT", b"svc:443", b"", b"", [])
    assert sid == 1


# === the HPACK memo coders against plain hpack (differential, seeded) ===

def _pool(rng):
    names = [b"content-type", b"x-a", b"x-b", b":path", b"grpc-status", b"cookie", b"x-request-id"]
    values = [b"application/grpc", b"0", b"1", b"/g.S/M", b"a" * 30, b"b" * 300, b""]
    fields = []
    for _ in range(rng.randrange(1, 7)):
        n, v = rng.choice(names), rng.choice(values)
        if n == b"x-request-id" and rng.random() < 0.5:
            v = b"%d" % rng.randrange(10**9)
        fields.append(NeverIndexedHeaderTuple(n, v) if rng.random() < 0.15 else (n, v))
    return fields


@pytest.mark.parametrize("seed", range(6))
def test_memo_encoder_keeps_the_peer_table_in_step(seed):
    import random

    from hpack import Decoder

    from secmesh.sidecar.codec.http2_hpack import MemoEncoder
    rng = random.Random(seed)
    enc, dec = MemoEncoder(), Decoder()
    dec.max_allowed_table_size = 1 << 16
    for _ in range(3000):
        if rng.random() < 0.01:
            enc.header_table_size = rng.choice([0, 64, 256, 4096, 8192])
        fields = _pool(rng)
        got = dec.decode(enc.encode(fields), raw=True)
        assert [tuple(h) for h in got] == [tuple(h) for h in fields]
        assert list(dec.header_table.dynamic_entries) == list(enc.header_table.dynamic_entries)


@pytest.mark.parametrize("seed", range(6))
def test_memo_decoder_answers_exactly_like_hpack(seed):
    import random

    from hpack import Decoder, Encoder

    from secmesh.sidecar.codec.http2_hpack import MemoDecoder
    rng = random.Random(seed)
    enc, plain, memo = Encoder(), Decoder(), MemoDecoder()
    blocks: list[bytes] = []
    steady = [[(b"content-type", b"application/grpc"), (b"x-a", b"1")], [(b"grpc-status", b"0")]]
    for _ in range(3000):
        r = rng.random()
        if r < 0.01:
            enc.header_table_size = rng.choice([0, 256, 4096])
        elif r < 0.02:
            plain.max_header_list_size = memo.max_header_list_size = rng.choice([40, 200, 1 << 16])
        elif r < 0.03:
            plain.max_allowed_table_size = memo.max_allowed_table_size = rng.choice([256, 4096])
        r = rng.random()
        if blocks and r < 0.3:
            block = rng.choice(blocks)                     # a replay, maybe under another table
        elif r < 0.7:
            block = enc.encode(rng.choice(steady))         # the usual: the same fields again
        else:
            block = enc.encode(_pool(rng))
            blocks.append(block)
        if rng.random() < 0.05:                           # garbage from a hostile peer
            i = rng.randrange(len(block))
            block = block[:i] + bytes([rng.randrange(256)]) + block[i + 1:]
        outcome = []
        for d in (plain, memo):
            try:
                outcome.append([(type(h), tuple(h)) for h in d.decode(block, raw=True)])
            except Exception as exc:                      # noqa: BLE001 - compare the failures too
                outcome.append(type(exc))
        assert outcome[0] == outcome[1]
        assert list(plain.header_table.dynamic_entries) == list(memo.header_table.dynamic_entries)
        assert plain.header_table.maxsize == memo.header_table.maxsize


def test_request_block_has_our_pseudo_headers_only_and_first():
    peer, client = lax(client_side=False), H2ClientCodec()
    exchange(peer, client)
    client.send_request(b"POST", b"svc", b"/g.S/M", b"http",
                        [(b":authority", b"evil"), (b"Host", b"evil"), (b"User-Agent", b"ua "),
                         (b"te", b"trailers"), (b"proxy-connection", b"x"), (b":path", b"/evil")])
    _, at_peer = exchange(peer, client)
    (req,) = of(at_peer, h2.events.RequestReceived)
    assert req.headers == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"),
                           (b":path", b"/g.S/M"), (b"user-agent", b"ua"), (b"te", b"trailers")]


def test_list_pairs_and_header_tuples_are_accepted():
    out = outbound_fields([[b"X-A", b"1 "], HeaderTuple(b"X-B", b"2"), (b"x-c", b"3")], [])
    assert out == [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")]
    assert type(out[1]) is HeaderTuple
