"""Property tests for the HTTP/1.1 request path (server codec driven like a proxy would).

Any bytes, cut anywhere: the codec never raises, does bounded work, reports a broken peer only
through one `ConnectionError`, and everything it writes is valid HTTP/1.1 that httptools'
response parser reads back — one answer per request, the error answer last.
"""

from __future__ import annotations

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secmesh.sidecar.codec import stream as s
from secmesh.sidecar.codec.http1 import H1ServerCodec
from secmesh.sidecar.codec.http1_wire import H1Limits

SETTINGS = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = H1Limits(max_request_line=256, max_header_bytes=512, max_headers=12, max_body=300)

VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nz",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://b:81/x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"0", b"ff", b"-1", b"Content-Length: 3\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Host: b\r\n", b"\x00", b"HTTP/1.1", b"\r\n\r\n", b";x=y"]

requests = st.lists(st.sampled_from(VALID), min_size=1, max_size=4).map(b"".join)
mutated = st.builds(
    lambda base, edits: _apply(base, edits), requests,
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3),
                       st.one_of(st.sampled_from(TOKENS), st.binary(max_size=6))), max_size=4))
inputs = st.one_of(st.binary(max_size=400), requests, mutated, mutated)
splits = st.lists(st.integers(1, 40), min_size=1, max_size=12)


def _apply(base: bytes, edits) -> bytes:
    for pos, cut, noise in edits:
        pos %= len(base) + 1
        base = base[:pos] + noise + base[pos + cut:]
    return base


class Proxy:
    """Answers like the sidecar would: after a request is in, 200 with a body (204 to HEAD),
    403 to tunnels; releases pipelined requests through ready_events()."""

    def __init__(self, codec: H1ServerCodec) -> None:
        self.codec = codec
        self.requests: dict[int, s.RequestHeaders] = {}
        self.answered: list[int] = []
        self.errors: list[s.ConnectionError] = []
        self.next_sid = 1
        self.tunnels: set[int] = set()

    def handle(self, events: list) -> None:
        while events:
            more: list = []
            for e in events:
                more += self.one(e)
            events = more

    def one(self, e) -> list:
        assert type(e) in (s.RequestHeaders, s.Data, s.Trailers, s.Upgrade, s.StreamReset, s.ConnectionError), e
        if isinstance(e, s.ConnectionError):
            assert not self.errors, "one ConnectionError at most"
            self.errors.append(e)
            return []
        if isinstance(e, s.RequestHeaders):
            assert e.stream_id == self.next_sid, (e.stream_id, self.next_sid)
            self.next_sid += 1
            self.requests[e.stream_id] = e
            if e.end_stream:
                return self.answer(e.stream_id)
        elif isinstance(e, s.Upgrade):
            self.tunnels.add(e.stream_id)
            return self.answer(e.stream_id)
        elif isinstance(e, s.Trailers) or (isinstance(e, s.Data) and e.end_stream):
            assert e.stream_id in self.requests
            if e.stream_id not in self.tunnels:
                return self.answer(e.stream_id)
        return []

    def answer(self, sid: int) -> list:
        if self.codec.should_close and self.errors:
            return []
        req = self.requests[sid]
        if sid in self.tunnels:
            self.codec.send_response(sid, 403, [], end_stream=True)
        elif req.method == b"HEAD":
            self.codec.send_response(sid, 204, [], end_stream=True)
        else:
            self.codec.send_response(sid, 200, [(b"x-sid", b"%d" % sid)])
            self.codec.send_data(sid, b"body-%d" % sid, end_stream=True)
        self.answered.append(sid)
        return self.codec.ready_events()


class Responses:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.complete = 0
        self.framed = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.framed = self.framed or name.lower() in (b"content-length", b"transfer-encoding")

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def on_message_complete(self) -> None:
        self.complete += 1


def drive(data: bytes, cuts: list[int]) -> tuple[Proxy, bytes]:
    codec = H1ServerCodec(limits=LIMITS)
    proxy = Proxy(codec)
    wire = []
    i = k = 0
    while i < len(data):
        n = cuts[k % len(cuts)]
        proxy.handle(codec.receive(data[i:i + n]))
        wire.append(codec.data_to_send())
        i, k = i + n, k + 1
        assert k <= len(data) + 1                     # bounded: every call consumes input
    proxy.handle(codec.receive_eof())
    wire.append(codec.data_to_send())
    return proxy, b"".join(wire)


@SETTINGS
@given(inputs, splits)
def test_any_bytes_any_splits_give_valid_http(data, cuts):
    proxy, wire = drive(data, cuts)
    got = Responses()
    got.parser.feed_data(wire)                        # raises on anything that is not HTTP/1.1
    expected = [200 if proxy.requests[sid].method != b"HEAD" else 204 for sid in proxy.answered]
    expected = [403 if sid in proxy.tunnels else st_ for sid, st_ in zip(proxy.answered, expected)]
    if proxy.errors and proxy.errors[0].http_status is not None and got.statuses[len(expected):]:
        expected.append(proxy.errors[0].http_status)
    assert got.statuses == expected
    # every answer is complete, except a last one delimited by the close the codec asks for
    unframed_last = got.complete == len(got.statuses) - 1 and not got.framed
    assert got.complete == len(got.statuses) or unframed_last
    if unframed_last:
        assert proxy.codec.should_close
    if proxy.errors:
        assert proxy.errors[0].reason in vars(s.Reason).values()


@SETTINGS
@given(requests, splits)
def test_valid_pipelines_are_served_whatever_the_splits(data, cuts):
    whole, _ = drive(data, [len(data)])
    split, wire = drive(data, cuts)
    assert [r.path for r in split.requests.values()] == [r.path for r in whole.requests.values()]
    assert not split.errors
    assert len(split.answered) >= 1
