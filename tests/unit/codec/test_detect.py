"""Protocol detection: the rule table, prefix handling and port modes."""

from __future__ import annotations

import pytest

from secmesh.sidecar.codec import detect as d

PREFACE = d.H2_PREFACE


@pytest.mark.parametrize("first,alpn,port,final,expected", [
    # ALPN decides when negotiated
    (b"", "h2", "auto", False, d.HTTP2),
    (b"", "http/1.1", "http", False, d.HTTP1),
    (b"GET / HTTP/1.1\r\n", "h2", "auto", False, d.HTTP2),     # ALPN beats bytes
    # the h2 preface, whole or in part
    (PREFACE, None, "auto", False, d.HTTP2),
    (PREFACE + b"\x00\x00", None, "http", False, d.HTTP2),
    (PREFACE[:10], None, "auto", False, None),                 # could still be h2
    (b"P", None, "auto", False, None),                         # h2 or POST/PUT/PATCH…
    (b"PRI * HTTP/1.1\r\n", None, "auto", False, d.TCP),       # PRI is no HTTP/1 method
    # HTTP/1.x request lines: an "auto" port (TCP otherwise) waits for the whole line
    (b"GET / HTTP/1.1\r\n", None, "auto", False, d.HTTP1),
    (b"POST ", None, "auto", False, None),
    (b"POST ", None, "http", False, d.HTTP1),                 # an "http" port: method + space will do
    (b"PROPFIND /x HTTP/1.1", None, "auto", False, None),
    (b"PROPFIND /x HTTP/1.1\r\n", None, "auto", False, d.HTTP1),
    (b"GET \x00\x01 HTTP/1.1\r\n", None, "auto", False, d.TCP),   # not a request target
    (b"OPTIO", None, "auto", False, None),
    (b"GE", None, "auto", True, d.TCP),                        # undecided at EOF: opaque
    (b"get / HTTP/1.1\r\n", None, "auto", False, d.TCP),       # methods are case-sensitive
    (b"BREW /pot HTTP/1.1\r\n", None, "auto", False, d.TCP),
    # other protocols
    (b"\x16\x03\x01\x02\x00", None, "auto", False, d.TCP),
    (b"SSH-2.0-OpenSSH_9.2\r\n", None, "auto", False, d.TCP),
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", None, "auto", False, d.TCP),   # postgres SSLRequest
    (b"", None, "auto", False, None),
    (b"", None, "auto", True, d.TCP),
    # port modes
    (b"GET / HTTP/1.1\r\n", None, "tcp", False, d.TCP),
    (b"SSH-2.0", None, "http", False, d.HTTP1),                # http port: the codec answers 400
    (b"anything", None, "http2", False, d.HTTP2),              # forced
])
def test_detection_table(first, alpn, port, final, expected):
    assert d.detect(first, alpn, port_protocol=port, final=final) == expected


def test_max_sniff_forces_a_decision():
    assert d.detect(b"P" * d.MAX_SNIFF) == d.TCP
    assert d.detect(b"OPTIONS" + b"X" * 40) == d.TCP
    assert d.detect(b"GET /" + b"a" * d.STRICT_MAX_SNIFF) == d.TCP        # auto: no endless wait
    assert d.detect(b"GET /" + b"a" * 40, port_protocol="http") == d.HTTP1


def test_every_prefix_of_a_request_line_waits_then_decides():
    line = b"DELETE /items/1 HTTP/1.1\r\n"
    verdicts = [d.detect(line[:i]) for i in range(1, len(line) + 1)]
    assert verdicts == [None] * (len(line) - 1) + [d.HTTP1]
    lax = [d.detect(line[:i], port_protocol="http") for i in range(1, len(line) + 1)]
    assert lax[:6] == [None] * 6 and set(lax[6:]) == {d.HTTP1}


def test_a_new_protocol_is_one_rule(monkeypatch):
    monkeypatch.setattr(d, "RULES", list(d.RULES))
    d.register(d.Rule("redis", ("redis",), lambda b: b.startswith(b"*") or None if b else None))
    assert d.detect(b"*1\r\n$4\r\nPING\r\n") == "redis"
    assert d.detect(b"", "redis") == "redis"
    assert d.detect(b"GET / HTTP/1.1\r\n") == d.HTTP1


def test_codecs_are_built_from_the_rule():
    from secmesh.sidecar import codec
    from secmesh.sidecar.codec.http1 import H1ServerCodec
    from secmesh.sidecar.codec.http1_client import H1ClientCodec
    from secmesh.sidecar.codec.http2 import H2ClientCodec, H2ServerCodec

    assert isinstance(codec.server_codec(d.HTTP1, scheme=b"https"), H1ServerCodec)
    assert isinstance(codec.client_codec(d.HTTP1), H1ClientCodec)
    assert isinstance(codec.server_codec(d.HTTP2), H2ServerCodec)
    assert isinstance(codec.client_codec(d.HTTP2), H2ClientCodec)
    assert codec.server_codec(d.TCP) is None and codec.client_codec("nope") is None
