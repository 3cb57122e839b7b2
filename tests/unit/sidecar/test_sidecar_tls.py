"""Material validation, context building and swapping, peer identity, handshake error reasons."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest

from secmesh.errors import IdentityError
from secmesh.identity.spiffe import TrustDomain
from secmesh.sidecar.tls import (ContextHolder, check_resumed_peer, classify_handshake_error, peer_spiffe_id,
                                 validate_material)
from tests.integration.sidecar.pki import TestCA, sa

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def ca():
    return TestCA("cluster.local")


def test_valid_material_and_context_swap(ca):
    leaf = ca.issue(sa("ns1", "web"))
    m = validate_material(leaf.chain_pem, leaf.key_pem, ca.pem, now=NOW)
    assert str(m.spiffe_id) == "spiffe://cluster.local/ns/ns1/sa/web"
    assert "PRIVATE" not in repr(m)
    holder = ContextHolder()
    seen = []
    holder.subscribe(lambda state: seen.append(state.version))
    s1 = holder.update(m)
    assert s1.server.verify_mode == ssl.CERT_REQUIRED and s1.server.minimum_version == ssl.TLSVersion.TLSv1_3
    assert s1.client.verify_mode == ssl.CERT_REQUIRED and not s1.client.check_hostname
    leaf2 = ca.issue(sa("ns1", "web"))
    s2 = holder.update(validate_material(leaf2.chain_pem, leaf2.key_pem, ca.pem, now=NOW))
    assert seen == [1, 2] and holder.state is s2 and s2.server is not s1.server
    assert s1.server.sni_callback is not None   # an old context moves new handshakes to the newest (P7)


def test_tls12_by_config(ca):
    leaf = ca.issue(sa("a", "b"))
    holder = ContextHolder(min_version="1.2")
    state = holder.update(validate_material(leaf.chain_pem, leaf.key_pem, ca.pem, now=NOW))
    assert state.server.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("case, reason", [("mismatch", "key_mismatch"), ("expired", "expired"),
                                          ("empty_bundle", "bad_pem"), ("garbage_key", "bad_key")])
def test_bad_material_is_refused_with_a_reason(ca, case, reason):
    leaf = ca.issue(sa("a", "b"), expired=case == "expired")
    other = ca.issue(sa("a", "b"))
    key = {"mismatch": other.key_pem, "garbage_key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
    bundle = b"not a pem" if case == "empty_bundle" else ca.pem
    with pytest.raises(IdentityError) as e:
        validate_material(leaf.chain_pem, key.get(case, leaf.key_pem), bundle, now=NOW)
    assert e.value.reason in (reason, "empty_bundle")


def test_peer_spiffe_id():
    td = TrustDomain.parse("cluster.local")
    cert = {"subjectAltName": (("URI", "spiffe://cluster.local/ns/a/sa/b"), ("DNS", "localhost"))}
    assert str(peer_spiffe_id(cert, td)) == "spiffe://cluster.local/ns/a/sa/b"
    assert str(peer_spiffe_id(cert, None)) == "spiffe://cluster.local/ns/a/sa/b"
    for bad, reason in [({}, "no_peer_cert"), (None, "no_peer_cert"),
                        ({"subjectAltName": (("DNS", "x"),)}, "bad_peer_id"),
                        ({"subjectAltName": (("URI", "spiffe://a/x"), ("URI", "spiffe://a/y"))}, "bad_peer_id"),
                        ({"subjectAltName": (("URI", "https://cluster.local/x"),)}, "bad_peer_id"),
                        ({"subjectAltName": (("URI", "spiffe://cluster.local"),)}, "bad_peer_id"),
                        ({"subjectAltName": (("URI", "spiffe://evil.org/ns/a/sa/b"),)}, "foreign_trust_domain")]:
        with pytest.raises(IdentityError) as e:
            peer_spiffe_id(bad, td)
        assert e.value.reason == reason


def test_classify_handshake_error():
    def ssl_error(reason: str) -> ssl.SSLError:
        e = ssl.SSLError(1, reason)
        e.reason = reason
        return e

    assert classify_handshake_error(ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE")) == "no_client_cert"
    assert classify_handshake_error(ssl_error("HTTP_REQUEST")) == "not_tls"
    assert classify_handshake_error(ssl_error("SOMETHING_NEW")) == "tls_error"
    v = ssl.SSLCertVerificationError(1, "x")
    v.verify_message = "certificate has expired"
    assert classify_handshake_error(v) == "cert_expired"
    v.verify_message = "unable to get local issuer certificate"
    assert classify_handshake_error(v) == "unknown_ca"
    assert classify_handshake_error(TimeoutError()) == "timeout"
    assert classify_handshake_error(ConnectionAbortedError("SSL handshake is taking longer than 1s")) == "timeout"
    assert classify_handshake_error(ConnectionResetError()) == "reset"


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """Drive a full mTLS handshake over memory BIOs (the same objects uvloop's SSL transport uses)."""
    si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server_ctx.wrap_bio(si, so, server_side=True)
    c = client_ctx.wrap_bio(ci, co, server_side=False)
    done = [False, False]
    for _ in range(10):
        for i, (obj, out, peer_in) in enumerate(((c, co, si), (s, so, ci))):
            try:
                obj.do_handshake()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if all(done):
            break
    return s, c, (si, so, ci, co)


def _pair(ca, *, resumption: bool):
    srv, cli = ca.issue(sa("ns1", "server")), ca.issue(sa("ns1", "client"))
    server = ContextHolder(session_resumption=resumption)
    server.update(validate_material(srv.chain_pem, srv.key_pem, ca.pem, now=NOW))
    client = ContextHolder(session_resumption=resumption)
    client.update(validate_material(cli.chain_pem, cli.key_pem, ca.pem, now=NOW))
    return server, client


def test_direct_sslobject_moves_data_like_the_stdlib_one(ca):
    server, client = _pair(ca, resumption=False)
    s, c, (si, so, ci, co) = _handshake(server.state.server, client.state.client)
    assert type(s).read is not s.read   # bound straight to the C method
    assert c.write(b"hello") == 5
    si.write(co.read())
    assert s.pending() == 0 and s.read(100) == b"hello"
    with pytest.raises(ssl.SSLWantReadError):
        s.read(100)


def test_session_resumption_per_listener_and_per_certificate_version(ca):
    server, client = _pair(ca, resumption=True)
    cctx = client.client_for("out")
    assert client.client_for("out") is cctx and client.client_for("other") is not cctx
    s, c, bios = _handshake(server.state.server, cctx)
    c.write(b"x")
    bios[0].write(bios[3].read())
    s.read(10)                                  # the ticket is sent after the handshake ...
    bios[2].write(bios[1].read())
    with pytest.raises(ssl.SSLWantReadError):
        c.read(10)                              # ... and processed by the client's next read
    assert cctx.secmesh_sessions.offer(c)
    s2, c2, _ = _handshake(server.state.server, cctx)
    assert c2.session_reused and s2.session_reused and s2.getpeercert()   # the peer cert survives resumption
    # new server material → new ticket keys → a full handshake again
    srv = ca.issue(sa("ns1", "server"))
    server.update(validate_material(srv.chain_pem, srv.key_pem, ca.pem, now=NOW))
    s3, c3, _ = _handshake(server.state.server, cctx)
    assert not c3.session_reused and not s3.session_reused
    # new client material → a new client context with an empty session store
    cli = ca.issue(sa("ns1", "client"))
    client.update(validate_material(cli.chain_pem, cli.key_pem, ca.pem, now=NOW))
    assert client.client_for("out") is not cctx and client.client_for("out").secmesh_sessions.session is None


def test_resumed_session_with_an_expired_peer_cert_is_refused():
    check_resumed_peer({"notAfter": "Jan  1 00:00:00 2100 GMT"}, NOW.timestamp())
    with pytest.raises(IdentityError) as e:
        check_resumed_peer({"notAfter": "Jan  1 00:00:00 2020 GMT"}, NOW.timestamp())
    assert e.value.reason == "cert_expired"
    with pytest.raises(IdentityError):
        check_resumed_peer(None, NOW.timestamp())
