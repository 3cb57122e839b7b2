"""Property tests for the HTTP/2 server codec: after a valid preface, arbitrary frames (valid
ones mixed with junk, any split) only ever produce model events; a broken peer shows up as
one `ConnectionError`, after which input is ignored. Never an exception, never a hang."""

from __future__ import annotations

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http2 import PREFACE, H2ServerCodec, H2Settings

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REQ = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/x")]
MODEL = (s.RequestHeaders, s.Data, s.Trailers, s.StreamReset, s.GoAway, s.StreamWritable,
         s.ConnectionError)


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


EMPTY_SETTINGS = frame(4, 0, 0, b"")
stream_ids = st.sampled_from([0, 1, 3, 5, 7, 2, 0x7FFFFFFF])
raw_frames = st.builds(frame, st.integers(0, 12), st.integers(0, 255), stream_ids, st.binary(max_size=40))
# Frames that are valid on their own, so the fuzz gets past the first error more often.
headers_frames = st.builds(lambda sid, end: ("H", sid, end), st.sampled_from([1, 3, 5, 7]), st.booleans())
data_frames = st.builds(lambda sid, n, end: frame(0, int(end), sid, b"d" * n),
                        st.sampled_from([1, 3, 5]), st.integers(0, 30), st.booleans())
rst_frames = st.builds(lambda sid, code: frame(3, 0, sid, code.to_bytes(4, "big")),
                       st.sampled_from([1, 3, 5]), st.integers(0, 14))
wu_frames = st.builds(lambda sid, inc: frame(8, 0, sid, inc.to_bytes(4, "big")),
                      st.sampled_from([0, 1, 3]), st.integers(0, 2**31 - 1))
ping = st.just(frame(6, 0, 0, b"12345678"))
goaway = st.builds(lambda last: frame(7, 0, 0, last.to_bytes(4, "big") + b"\x00\x00\x00\x00"), st.integers(0, 9))
items = st.lists(st.one_of(raw_frames, headers_frames, data_frames, rst_frames, wu_frames, ping, goaway),
                 max_size=12)
splits = st.lists(st.integers(1, 64), min_size=1, max_size=6)


def render(parts, encoder: hpack.Encoder) -> bytes:
    out = []
    for p in parts:
        if isinstance(p, tuple):
            _, sid, end = p
            out.append(frame(1, 0x4 | int(end), sid, encoder.encode(REQ)))
        else:
            out.append(p)
    return b"".join(out)


@SETTINGS
@given(items, splits)
def test_random_frames_after_a_valid_preface(parts, cuts):
    server = H2ServerCodec(H2Settings(max_concurrent_streams=3))
    data = PREFACE + EMPTY_SETTINGS + render(parts, hpack.Encoder())
    events = []
    i = k = 0
    dead = False
    while i < len(data):
        n = cuts[k % len(cuts)]
        got = server.receive(data[i:i + n])
        if dead:
            assert got == []                           # nothing after the connection error
        for e in got:
            assert isinstance(e, MODEL), e
            if isinstance(e, s.RequestHeaders) and e.end_stream:
                server.send_response(e.stream_id, 200, [], end_stream=True)
            elif isinstance(e, s.Data) and e.data:
                server.acknowledge_received(e.stream_id, len(e.data))
        dead = dead or any(isinstance(e, s.ConnectionError) for e in got)
        events += got
        assert isinstance(server.data_to_send(), bytes)
        i, k = i + n, k + 1
    errors = [e for e in events if isinstance(e, s.ConnectionError)]
    assert len(errors) <= 1
    if errors:
        assert server.should_close
    assert isinstance(server.receive_eof(), list)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_instead_of_a_preface(junk):
    server = H2ServerCodec()
    events = server.receive(junk)
    assert all(isinstance(e, s.ConnectionError) for e in events)
    if not PREFACE.startswith(junk[:len(PREFACE)]):
        assert len(events) == 1 and server.should_close
