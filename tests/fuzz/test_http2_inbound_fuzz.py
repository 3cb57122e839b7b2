"""Differential property test: our one-pass inbound header check (`inbound_problem`) accepts
exactly the header blocks h2's own `validate_headers` accepts, for requests, responses
(informational ones included) and trailers. Blocks are drawn from a grammar aimed at the
rules' edges: upper case, whitespace, CR/LF/NUL, colons, pseudo-headers in every order and
duplicated, te, connection-specific fields, empty names, host vs :authority, empty :path,
CONNECT and extended CONNECT, never-indexed tuples, the same fields again (our memo)."""

from __future__ import annotations

import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
import hpack
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secmesh.sidecar.codec.http2_inbound import REQUEST, RESPONSE, TRAILERS, inbound_problem

SETTINGS = settings(max_examples=800, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLAGS = {
    REQUEST: HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                   is_push_promise=False),
    RESPONSE: HeaderValidationFlags(is_client=True, is_trailer=False, is_response_header=True,
                                    is_push_promise=False),
    TRAILERS: HeaderValidationFlags(is_client=False, is_trailer=True, is_response_header=False,
                                    is_push_promise=False),
}
PSEUDO = [b":method", b":scheme", b":authority", b":path", b":status", b":protocol", b":foo",
          b":", b"::path", b":Path", b":path:"]
REGULAR = [b"x-a", b"content-type", b"cookie", b"X-Upper", b"te", b"TE", b"connection",
           b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"Host",
           b"", b"x:a", b"a b", b"x\x00", b"\x7f", b"\xc3\xa9", b"a\tb", b"!#$%&'*+-.^_`|~09@[]"]
VALUES = [b"", b"GET", b"CONNECT", b"POST", b"http", b"https", b"/", b"svc", b"other", b"trailers",
          b"Trailers", b"TRAILERS", b"gzip", b"trailers, gzip", b" a", b"a ", b"\ta", b"a\t", b" ",
          b"a\rb", b"a\nb", b"a\x00b", b"200", b"100", b"103", b"websocket", b"a b", b"\x80\xff"]
_ALPHABET = b"aA :\t\r\n\x00-z\x7f\x80"
_BYTES = st.binary(max_size=5).map(lambda b: bytes(_ALPHABET[c % len(_ALPHABET)] for c in b))

# Whole fields at the rules' edges, drawn four times as often as free-form ones: most rules
# only show when everything else in the block is valid.
EDGES = [(b"x-a", b" 1"), (b"x-a", b"1\r"), (b"x-a", b""), (b"te", b"trailers"), (b"te", b"Trailers"),
         (b"te", b"gzip"), (b"te", b""),
         (b"host", b"svc"), (b"host", b"other"), (b"host", b""), (b":authority", b"svc"),
         (b":authority", b"other"), (b":authority", b""), (b":path", b""), (b":path", b"/"),
         (b":path", b"*"), (b":scheme", b"https"), (b":method", b"GET"), (b":method", b"CONNECT"),
         (b":method", b"connect"), (b":protocol", b"websocket"), (b":status", b"200"),
         (b":status", b"101"), (b":status", b""), (b":method", b" GET"), (b":path", b"/a\r\n"),
         (b"connection", b"close"), (b"upgrade", b"h2c"), (b"cookie", b"a=1"), (b"x-a", b"1")]
names = st.one_of(st.sampled_from(PSEUDO), st.sampled_from(REGULAR), _BYTES,
                  _BYTES.map(lambda b: b":" + b))
values = st.one_of(st.sampled_from(VALUES), _BYTES)
fields = st.builds(lambda nv, kind: nv if kind == 0 else
                   HeaderTuple(*nv) if kind == 1 else NeverIndexedHeaderTuple(*nv),
                   st.one_of(*[st.sampled_from(EDGES)] * 4, st.tuples(names, values)),
                   st.integers(0, 2))

BASES = [
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")],
    [(b":method", b"CONNECT"), (b":authority", b"svc:443")],
    [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
     (b":authority", b"svc"), (b":path", b"/chat")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"host", b"svc")],
    [(b":status", b"200"), (b"content-type", b"text/plain")],
    [(b":status", b"103"), (b"link", b"</a>")],
    [(b"grpc-status", b"0"), (b"grpc-message", b"")],
    [],
]


@st.composite
def blocks(draw) -> list:
    """A well-formed base with up to three edits: most single rules only show when everything
    else in the block is valid, so a third of the blocks have one edit, a fifth none."""
    block = list(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        edit = draw(st.integers(0, 5))
        i = draw(st.integers(0, max(len(block) - 1, 0)))
        if edit <= 1 or not block:                         # insert a field anywhere
            block.insert(draw(st.integers(0, len(block))), draw(fields))
        elif edit == 2:                                    # drop one
            del block[i]
        elif edit == 3:                                    # change a value
            block[i] = (block[i][0], draw(values))
        elif edit == 4:                                    # move one
            block.insert(draw(st.integers(0, len(block) - 1)), block.pop(i))
        else:                                              # the same field twice
            block.insert(draw(st.integers(0, len(block))), block[i])
    return block


def h2_accepts(headers: list, kind: int) -> bool:
    try:
        list(validate_headers(headers, FLAGS[kind]))
    except ProtocolError:
        return False
    return True


@pytest.mark.parametrize("kind", [REQUEST, RESPONSE, TRAILERS], ids=["request", "response", "trailers"])
@SETTINGS
@given(headers=blocks())
def test_one_pass_check_accepts_exactly_what_h2_accepts(kind, headers):
    ours = inbound_problem(headers, kind)
    assert (ours is None) == h2_accepts(headers, kind), (headers, ours)
    assert inbound_problem(headers, kind) == ours          # the memo changes nothing


def test_the_grammar_reaches_both_outcomes():
    """Guard against a grammar that only ever produces refused (or accepted) blocks."""
    seen = {k: set() for k in FLAGS}

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(headers=blocks())
    def collect(headers):
        for kind in FLAGS:
            seen[kind].add(h2_accepts(headers, kind))

    collect()
    assert all(v == {True, False} for v in seen.values()), seen


# === the O(1) open-stream count stays exact whatever the peer and the proxy do ===

def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


_REQ = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/x")]
peer_moves = st.tuples(st.sampled_from(["headers", "data", "rst", "window"]),
                       st.sampled_from([1, 3, 5, 7, 9, 11, 13]), st.booleans())
proxy_moves = st.sampled_from(["answer", "answer-open", "reset", "none", "trailers"])


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=st.lists(st.tuples(st.lists(peer_moves, min_size=1, max_size=6),
                                 st.lists(proxy_moves, min_size=1, max_size=4)), max_size=8))
def test_open_stream_count_stays_exact(script):
    import h2.connection
    from h2.stream import StreamState

    from secmesh.sidecar.codec import stream as s
    from secmesh.sidecar.codec.http2 import PREFACE, H2ServerCodec

    server, enc = H2ServerCodec(), hpack.Encoder()
    server.receive(PREFACE + _frame(4, 0, 0, b""))
    conn, live = server._h2, {}                    # stream id -> answered (headers sent)?
    for moves, answers in script:
        raw = b""
        for kind, sid, end in moves:
            if kind == "headers":
                raw += _frame(1, 4 | int(end), sid, enc.encode(_REQ))
            elif kind == "data":
                raw += _frame(0, int(end), sid, b"d")
            elif kind == "rst":
                raw += _frame(3, 0, sid, (8).to_bytes(4, "big"))
            else:
                raw += _frame(8, 0, sid, (5).to_bytes(4, "big"))
        for e in server.receive(raw):
            if isinstance(e, s.RequestHeaders):
                live[e.stream_id] = False
        for i, act in enumerate(answers):
            if not live or server.should_close:
                break
            sid = sorted(live)[i % len(live)]
            if act == "reset":
                server.reset_stream(sid)
            elif act == "trailers" and live[sid]:
                server.send_trailers(sid, [(b"grpc-status", b"0")])
            elif act.startswith("answer") and not live[sid]:
                server.send_response(sid, 200, [], end_stream=act == "answer")
                if act == "answer-open":
                    live[sid] = True
                    continue
            else:
                continue
            del live[sid]
        server.data_to_send()
        if server.should_close:
            return
        assert all(st_.state_machine.state is not StreamState.CLOSED for st_ in conn.streams.values())
        assert len(conn.streams) == h2.connection.H2Connection._open_streams(conn, 1)
