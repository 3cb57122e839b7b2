"""`protocol: auto` detection (`secmesh.sidecar.protocol_sniff`): ALPN, preface, request line, partial reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secmesh.sidecar.codec.detect import H2_PREFACE, HTTP1_METHODS
from secmesh.sidecar.config import ListenerConfig
from secmesh.sidecar.protocol_sniff import HTTP1, HTTP2, MAX_SNIFF, TCP, by_alpn, detect, sniff

REQUEST_LINES = [
    b"GET / HTTP/1.1\r\n",
    b"GET /ok?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST http://svc.local:8080/echo HTTP/1.0\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"CONNECT svc:443 HTTP/1.1\r\n",
    b"CONNECT [::1]:443 HTTP/1.1\r\n",
    b"DELETE /a HTTP/1.1\n",            # bare LF, as llhttp tolerates
    b"PROPFIND /dav/ HTTP/1.1\r\n",
]

NOT_HTTP = [
    b"\x00\x00\x00\x01",                                    # binary length prefix
    b"\x16\x03\x01\x02\x00",                               # a TLS ClientHello (TLS inside the tunnel)
    b"SSH-2.0-OpenSSH_9.6\r\n",                            # client banner
    b"*1\r\n$4\r\nPING\r\n",                               # redis RESP
    b"EHLO mail.example\r\n",                              # SMTP client command (not a method)
    b"get / HTTP/1.1\r\n",                                 # methods are case-sensitive
    b"GET  / HTTP/1.1\r\n",                                # two spaces
    b"GET /\x00 HTTP/1.1\r\n",                             # control byte in the target
    b"GET /\xff HTTP/1.1\r\n",                             # 8-bit byte in the target
    b"GET \x7f HTTP/1.1\r\n",
    b"GET / HTTP/2.0\r\n",                                 # not an HTTP/1.x version
    b"GET / HTTP/1.x\r\n",
    b"GET / HTTP/1.1 \r\n",
    b"GET / HTTP/1.1\rX",
    b"GETX / HTTP/1.1\r\n",
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",                   # a preface that goes wrong at the end
    b"hello world\n",
]


@pytest.mark.parametrize("line", REQUEST_LINES)
def test_request_lines_are_http1(line: bytes) -> None:
    assert sniff(line) == HTTP1


@pytest.mark.parametrize("line", REQUEST_LINES)
def test_every_prefix_of_a_request_line_waits_for_more(line: bytes) -> None:
    end = line.index(b"\n") + 1
    for n in range(1, end):
        assert sniff(line[:n]) is None, line[:n]
        assert sniff(line[:n], final=True) == TCP        # timeout / EOF with a partial line: TCP


def test_h2_preface() -> None:
    assert sniff(H2_PREFACE) == HTTP2
    assert sniff(H2_PREFACE + b"\x00\x00\x12\x04") == HTTP2   # SETTINGS in the same read
    for n in range(1, len(H2_PREFACE)):
        assert sniff(H2_PREFACE[:n]) is None
        assert sniff(H2_PREFACE[:n], final=True) == TCP


@pytest.mark.parametrize("data", NOT_HTTP)
def test_other_bytes_are_tcp_at_once(data: bytes) -> None:
    assert sniff(data) == TCP


def test_nothing_yet_waits_then_is_tcp() -> None:
    assert sniff(b"") is None
    assert sniff(b"", final=True) == TCP


def test_a_request_line_longer_than_the_limit_is_tcp() -> None:
    long = b"GET /" + b"a" * MAX_SNIFF
    assert sniff(long) == TCP
    assert sniff(b"GET /" + b"a" * 100, limit=64) == TCP
    assert sniff(b"GET /" + b"a" * 100) is None


def test_alpn_decides_without_bytes() -> None:
    assert by_alpn("h2") == HTTP2
    assert by_alpn("http/1.1") == HTTP1
    assert by_alpn(None) is None and by_alpn("") is None and by_alpn("spdy/3") is None
    assert detect(b"", "h2") == HTTP2
    assert detect(b"\x00\x01", "http/1.1") == HTTP1      # ALPN wins over the bytes
    assert detect(b"\x00\x01", None) == TCP
    assert detect(b"GET / HTTP/1.1\r\n", "") == HTTP1


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_random_bytes_never_crash_and_final_always_decides(data: bytes) -> None:
    got = sniff(data)
    assert got in (None, HTTP1, HTTP2, TCP)
    assert sniff(data, final=True) in (HTTP1, HTTP2, TCP)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64).filter(lambda b: b[:1] not in b"ABCDGHLMOPRSTU"))
def test_bytes_not_starting_like_a_method_are_tcp(data: bytes) -> None:
    assert sniff(data) == TCP


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(HTTP1_METHODS)),
       st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=40),
       st.integers(min_value=1, max_value=60), st.binary(max_size=20))
def test_split_reads_reach_the_same_verdict(method: bytes, path: str, cut: int, tail: bytes) -> None:
    """However the first bytes are split across reads, the verdict on the whole is the one reached."""
    data = method + b" /" + path.encode() + b" HTTP/1.1\r\n" + tail
    whole = sniff(data)
    assert whole == HTTP1
    head = data[:cut]
    early = sniff(head)
    assert early in (None, whole)


def test_listener_config_accepts_auto_and_the_timeout() -> None:
    base = dict(name="a", address="127.0.0.1:1", upstream="127.0.0.1:2")
    cfg = ListenerConfig(protocol="auto", **base)  # type: ignore[arg-type]
    assert cfg.is_l7 and cfg.protocol_detection_timeout == pytest.approx(0.1)
    assert ListenerConfig(protocol="http", **base).is_l7  # type: ignore[arg-type]
    assert not ListenerConfig(**base).is_l7  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="auto, tcp or http"):
        ListenerConfig(protocol="udp", **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protocol_detection_timeout"):
        ListenerConfig(protocol="auto", protocol_detection_timeout=-1, **base)  # type: ignore[arg-type]


# === authorization on `auto` ports ==================================================================

_POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-front, namespace: prod}
spec:
  rules:
  - from: [{source: {namespaces: ["front"]}}]
  - to: [{operation: {methods: ["GET"], ports: ["8080"]}}]
"""


_DENY_ADMIN = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: prod}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""


def _authorizer(tmp_path, protocol: str, *, l7: bool, extra: str = ""):  # type: ignore[no-untyped-def]
    from secmesh.sidecar.authz_policy import PolicyAuthorizer
    from secmesh.sidecar.config import load
    from secmesh.sidecar.policy_source import PolicySource

    pfile = tmp_path / "p.yaml"
    pfile.write_text(_POLICIES + extra)
    cfg_path = tmp_path / "sidecar.yaml"
    cfg_path.write_text(f"trust_domain: td\npolicies: {pfile}\nworkload: {{namespace: prod}}\nlisteners:\n"
                        f"  - {{name: in, address: '127.0.0.1:15006', upstream: '127.0.0.1:8080', "
                        f"protocol: {protocol}}}\n")
    cfg = load(cfg_path)
    return PolicyAuthorizer(PolicySource(cfg, PolicySource.load(cfg)), listener="in", protocol=protocol,
                            port=8080, l7_available=l7)


def _info(principal: str):  # type: ignore[no-untyped-def]
    from secmesh.identity.spiffe import SpiffeId
    from secmesh.sidecar.authz_l4 import ConnectionInfo

    return ConnectionInfo(SpiffeId.parse(principal), "10.0.0.1", 4444, "10.0.0.2", 15006)


def test_auto_port_is_decided_with_the_http_rules_and_hands_needs_request_to_l7(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from secmesh.sidecar.authz_policy import refuse_tcp

    authz = _authorizer(tmp_path, "auto", l7=True)
    d = authz.decide(_info("spiffe://td/ns/other/sa/a"))            # only the GET rule could admit it
    assert d.allowed and d.code == "needs_request" and d.residual is not None
    assert refuse_tcp(d.code) is not None and "not HTTP" in refuse_tcp(d.code)  # type: ignore[operator]
    d = authz.decide(_info("spiffe://td/ns/front/sa/a"))             # decided on connection attributes
    assert d.allowed and d.code == "allow_policy"
    assert refuse_tcp(d.code) is None


def test_an_http_deny_rule_cannot_be_dodged_by_speaking_something_that_sniffs_as_tcp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A DENY on paths: a client the ALLOW admits must not get a TCP splice past it by sending bytes
    the sniffer does not take for HTTP (a backend might still parse them as a request). On TCP,
    Istio drops the HTTP fields of a DENY rule, so it denies; `auto` refuses such a connection too."""
    from secmesh.sidecar.authz_policy import refuse_tcp

    d = _authorizer(tmp_path, "auto", l7=True, extra=_DENY_ADMIN).decide(_info("spiffe://td/ns/front/sa/a"))
    assert d.allowed and d.code == "needs_request"                  # HTTP: decided per request
    assert refuse_tcp(d.code) is not None                          # TCP: refused
    assert not _authorizer(tmp_path, "tcp", l7=False, extra=_DENY_ADMIN).decide(
        _info("spiffe://td/ns/front/sa/a")).allowed                 # as on a plain tcp port


def test_auto_port_without_l7_fails_closed_at_connection_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = _authorizer(tmp_path, "auto", l7=False).decide(_info("spiffe://td/ns/other/sa/a"))
    assert not d.allowed and d.code == "needs_request_no_l7" and "not available" in d.reason


def test_auto_ports_detect_what_the_codec_registry_knows(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One registry: a rule added to `codec.detect` is found by `protocol: auto` too (ALPN and bytes)."""
    from secmesh.sidecar.codec import detect as registry

    monkeypatch.setattr(registry, "RULES", list(registry.RULES))
    registry.register(registry.Rule("redis", ("redis",), lambda b: b.startswith(b"*") or None if b else None))
    assert sniff(b"*1\r\n$4\r\nPING\r\n") == "redis"
    assert by_alpn("redis") == "redis"
    assert sniff(b"GET / HTTP/1.1\r\n") == HTTP1
