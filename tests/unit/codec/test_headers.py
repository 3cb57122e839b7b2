"""Header rewrites: hop-by-hop, XFCC, XFF, request id, h1 ⇄ h2."""

from __future__ import annotations

import hashlib

from secmesh.sidecar.codec import headers as hd

ME = "spiffe://cluster.local/ns/app/sa/web"
PEER = "spiffe://cluster.local/ns/client/sa/cli"
DER = b"0\x82\x01\x00-not-really-a-certificate"


def test_hop_by_hop_including_connection_listed_names():
    h = [(b"connection", b"keep-alive, X-Secret, Upgrade"), (b"keep-alive", b"timeout=5"),
         (b"x-secret", b"1"), (b"upgrade", b"websocket"), (b"transfer-encoding", b"chunked"),
         (b"proxy-connection", b"close"), (b"te", b"trailers"), (b"accept", b"*/*"),
         (b"http2-settings", b"AAA")]
    assert hd.strip_hop_by_hop(h) == [(b"te", b"trailers"), (b"accept", b"*/*")]
    assert hd.strip_hop_by_hop(h, keep_te_trailers=False) == [(b"accept", b"*/*")]
    assert (b"upgrade", b"websocket") in hd.strip_hop_by_hop(h, keep_upgrade=True)


def test_te_other_than_trailers_is_dropped():
    assert hd.strip_hop_by_hop([(b"te", b"gzip, trailers")]) == []
    assert hd.strip_hop_by_hop([(b"te", b" Trailers ")]) == [(b"te", b" Trailers ")]


def test_connection_cannot_strip_framing_or_our_own_fields():
    h = [(b"connection", b"content-length, host, x-forwarded-for, x-request-id"),
         (b"content-length", b"3"), (b"x-forwarded-for", b"1.2.3.4"), (b"x-request-id", b"r")]
    assert hd.strip_hop_by_hop(h) == h[1:]


def test_xfcc_envoy_format():
    value = hd.xfcc_value(by=ME, peer_cert_der=DER, peer_uri=PEER)
    digest = hashlib.sha256(DER).hexdigest()
    assert value == f"By={ME};Hash={digest};URI={PEER}".encode()
    assert hd.xfcc_value(by=ME, peer_cert_der=None, peer_uri=None) is None


def test_xfcc_quotes_values_with_separators():
    value = hd.xfcc_value(by='a;b="c"', peer_cert_der=None, peer_uri=PEER)
    assert value.startswith(b'By="a;b=\\"c\\"";URI=')


def test_xfcc_always_overwritten():
    forged = [(b"x-forwarded-client-cert", b"URI=spiffe://evil/ns/x/sa/admin"), (b"a", b"1"),
              (b"x-forwarded-client-cert", b"Hash=00")]
    mine = hd.xfcc_value(by=ME, peer_cert_der=DER, peer_uri=PEER)
    assert hd.set_xfcc(forged, mine) == [(b"a", b"1"), (b"x-forwarded-client-cert", mine)]
    assert hd.set_xfcc(forged, None) == [(b"a", b"1")]            # plaintext peer: none at all


def test_xff_append_and_merge():
    assert hd.append_xff([], "10.0.0.1") == [(b"x-forwarded-for", b"10.0.0.1")]
    h = [(b"x-forwarded-for", b"1.1.1.1"), (b"b", b"2"), (b"x-forwarded-for", b"2.2.2.2")]
    assert hd.append_xff(h, b"10.0.0.1") == [(b"b", b"2"), (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.1")]


def test_request_id_kept_or_generated():
    h, rid = hd.ensure_request_id([(b"x-request-id", b"abc")])
    assert rid == b"abc" and h == [(b"x-request-id", b"abc")]
    h, rid = hd.ensure_request_id([(b"x-request-id", b"")], make_id=lambda: b"new")
    assert rid == b"new" and h == [(b"x-request-id", b"new")]
    assert len(hd.new_request_id()) == 36


def test_forward_request_headers_one_pass_matches_the_pieces():
    h = [(b"connection", b"close, x-hop"), (b"x-hop", b"1"), (b"te", b"trailers"),
         (b"x-forwarded-client-cert", b"forged"), (b"x-forwarded-for", b"9.9.9.9"),
         (b"x-request-id", b"req-1"), (b"accept", b"*/*"), (b"upgrade", b"websocket")]
    xfcc = hd.xfcc_value(by=ME, peer_cert_der=DER, peer_uri=PEER)
    out, rid = hd.forward_request_headers(h, xfcc=xfcc, client_ip="10.1.2.3")
    assert rid == b"req-1"
    assert out == [(b"te", b"trailers"), (b"accept", b"*/*"), (b"x-forwarded-for", b"9.9.9.9, 10.1.2.3"),
                   (b"x-forwarded-client-cert", xfcc), (b"x-request-id", b"req-1")]
    out, rid = hd.forward_request_headers([], xfcc=None, client_ip=None, make_id=lambda: b"gen",
                                          keep_upgrade=True)
    assert out == [(b"x-request-id", b"gen")] and rid == b"gen"
    out, _ = hd.forward_request_headers([(b"upgrade", b"websocket")], xfcc=None, client_ip=None,
                                        keep_upgrade=True)
    assert (b"upgrade", b"websocket") in out


def test_h1_h2_translation():
    h1 = [(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
          (b"transfer-encoding", b"chunked"), (b"cookie", b"a=1"), (b"accept", b"*/*")]
    assert hd.h1_to_h2(h1) == [(b"te", b"trailers"), (b"cookie", b"a=1"), (b"accept", b"*/*")]
    h2 = [(b"cookie", b"a=1"), (b"te", b"trailers"), (b"accept", b"*/*"), (b"cookie", b"b=2")]
    assert hd.h2_to_h1(h2) == [(b"accept", b"*/*"), (b"cookie", b"a=1; b=2")]
    assert hd.forward_response_headers([(b"connection", b"close"), (b"server", b"x")]) == [(b"server", b"x")]
