"""`secmesh sidecar inbound|outbound` as processes, with curl, openssl and Python TLS clients."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess

import pytest

from tests.integration.sidecar.harness import (admin_get, client_context, echo_roundtrip, first_read, metric,
                                               start_sidecar, tls_connect)
from tests.integration.sidecar.pki import TestCA, sa
from tests.support.proc import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def _inbound(tmp_path, pki, upstream: str, *extra: str, name: str = "inbound"):
    port = free_port()
    proc, admin = start_sidecar(tmp_path, name, "inbound", "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                                "--ca", str(pki.ca_pem), "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                                *extra)
    return proc, admin, port


def test_curl_and_openssl_through_outbound_and_inbound(tmp_path, pki, http_backend):
    inbound, _, in_port = _inbound(tmp_path, pki, http_backend.address, "--allow-principal", pki.client_id)
    out_port = free_port()
    with inbound:
        outbound, out_admin = start_sidecar(
            tmp_path, "outbound", "outbound", "--listen", f"127.0.0.1:{out_port}", "--upstream",
            f"127.0.0.1:{in_port}", "--ca", str(pki.ca_pem), "--cert", str(pki.client_cert), "--key",
            str(pki.client_key), "--peer-id", pki.server_id)
        with outbound:
            r = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{out_port}/ok",
                                f"http://127.0.0.1:{out_port}/64k", "-o", "/dev/null", "-o", str(tmp_path / "big")],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            assert (tmp_path / "big").stat().st_size == 65536
            r = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{out_port}/ok"],
                               capture_output=True, text=True)
            assert r.stdout == "ok\n"
            # a mesh client straight to the inbound: curl with a client cert, and openssl s_client
            r = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(pki.ca_pem), "--cert",
                                str(pki.client_cert), "--key", str(pki.client_key), f"https://localhost:{in_port}/ok"],
                               capture_output=True, text=True)
            assert r.stdout == "ok\n", r.stderr
            r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{in_port}", "-quiet", "-CAfile",
                                str(pki.ca_pem), "-cert", str(pki.client_cert), "-key", str(pki.client_key),
                                "-verify_return_error"],
                               input="GET /ok HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=10)
            assert "ok" in r.stdout.splitlines()[-1], r.stdout + r.stderr
            status, text = admin_get(out_admin, "/metrics")
            assert metric(text, "secmesh_sidecar_connections_total", listener="outbound", result="accepted") >= 2
            assert metric(text, "secmesh_sidecar_bytes_total", listener="outbound", direction="downstream") > 65536


def test_refusals_are_logged_counted_and_others_keep_flowing(tmp_path, pki, echo):
    """No cert, foreign CA, expired cert, wrong ID, plaintext on STRICT, a stalled handshake."""
    inbound, admin, port = _inbound(tmp_path, pki, echo.address, "--allow-principal", "spiffe://cluster.local/ns/*/sa/client",
                                    "--handshake-timeout", "1s")
    foreign = TestCA("cluster.local", name="foreign root").issue(sa("default", "client"))
    fc, fk = foreign.write(tmp_path, "foreign")
    expired = pki.ca.issue(sa("default", "client"), expired=True)
    ec_, ek = expired.write(tmp_path, "expired")
    wrong = pki.ca.issue(sa("default", "intruder"))
    wc, wk = wrong.write(tmp_path, "wrong")
    good = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    with inbound:
        stalled = socket.create_connection(("127.0.0.1", port))      # says nothing: must time out
        keep = tls_connect(port, good)
        assert echo_roundtrip(keep, b"hello") == b"hello"
        before = echo.connections
        for cert, key in ((None, None), (fc, fk), (ec_, ek)):
            try:
                s = tls_connect(port, client_context(pki.ca_pem, cert, key))
            except (ssl.SSLError, ConnectionResetError):
                continue
            with s:
                s.sendall(b"ping")
                assert not first_read(s)   # P8: TLS 1.3 shows the refusal on the first read
        with tls_connect(port, client_context(pki.ca_pem, wc, wk)) as s:   # verified but not allowed
            s.sendall(b"must never reach the app")
            assert not first_read(s)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:   # plaintext on STRICT
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        assert echo.connections == before, "a refused peer reached the app"
        assert echo_roundtrip(keep, b"still flowing") == b"still flowing"
        stalled.settimeout(5)
        try:
            assert stalled.recv(10) == b""
        except ConnectionResetError:
            pass
        stalled.close()
        keep.close()
        _, text = admin_get(admin, "/metrics")
        fails = {r: metric(text, "secmesh_sidecar_handshake_failures_total", listener="inbound", reason=r)
                 for r in ("no_client_cert", "unknown_ca", "cert_expired", "not_tls", "timeout")}
        assert all(v >= 1 for v in fails.values()), fails
        assert metric(text, "secmesh_sidecar_authz_decisions_total", decision="deny") == 1
        assert metric(text, "secmesh_sidecar_authz_decisions_total", decision="allow") == 1
        assert metric(text, "secmesh_sidecar_connections_total", result="denied") == 1
    log = inbound.output()
    assert "spiffe://cluster.local/ns/default/sa/intruder is not in the allow list" in log
    assert "PRIVATE KEY" not in log


def test_outbound_refuses_an_unexpected_server_id(tmp_path, pki, echo):
    inbound, _, in_port = _inbound(tmp_path, pki, echo.address, "--allow-all")
    out_port = free_port()
    with inbound:
        outbound, admin = start_sidecar(
            tmp_path, "outbound", "outbound", "--listen", f"127.0.0.1:{out_port}", "--upstream",
            f"127.0.0.1:{in_port}", "--ca", str(pki.ca_pem), "--cert", str(pki.client_cert), "--key",
            str(pki.client_key), "--peer-id", "spiffe://cluster.local/ns/default/sa/someone-else")
        with outbound, socket.create_connection(("127.0.0.1", out_port), timeout=5) as s:
            s.sendall(b"hi")
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
            _, text = admin_get(admin, "/metrics")
            assert metric(text, "secmesh_sidecar_handshake_failures_total", reason="upstream_unexpected_id") == 1
        assert echo.received == 0


def test_tls12_is_refused_by_default_and_allowed_by_flag(tmp_path, pki, echo):
    inbound, _, port = _inbound(tmp_path, pki, echo.address, "--allow-all")
    tls12 = client_context(pki.ca_pem, pki.client_cert, pki.client_key, max_version=ssl.TLSVersion.TLSv1_2)
    with inbound:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls_connect(port, tls12).close()
    inbound, _, port = _inbound(tmp_path, pki, echo.address, "--allow-all", "--min-tls", "1.2", name="inbound12")
    with inbound, tls_connect(port, tls12) as s:
        assert s.version() == "TLSv1.2"
        assert echo_roundtrip(s, b"x" * 100000) == b"x" * 100000


def test_sigterm_drains_open_connections(tmp_path, pki, echo):
    inbound, _, port = _inbound(tmp_path, pki, echo.address, "--allow-all")
    with inbound:
        s = tls_connect(port, client_context(pki.ca_pem, pki.client_cert, pki.client_key))
        assert echo_roundtrip(s, b"before") == b"before"
        inbound.signal(15)
        wait_until(lambda: "draining" in inbound.output(), timeout=5, what="drain start")
        assert echo_roundtrip(s, b"during drain") == b"during drain"   # established keeps flowing
        with pytest.raises(OSError):   # … while the port no longer accepts
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        s.close()
        assert inbound.popen.wait(10) == 0


def test_session_resumption_between_sidecars_and_rotation_forces_a_full_handshake(tmp_path, pki, echo):
    """Outbound resumes with the inbound's ticket; new server material (new ticket keys) → full handshake."""
    cert, key = tmp_path / "srv.pem", tmp_path / "srv.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    in_port = free_port()
    inbound, in_admin = start_sidecar(tmp_path, "inbound", "inbound", "--listen", f"127.0.0.1:{in_port}", "--upstream",
                                      echo.address, "--ca", str(pki.ca_pem), "--cert", str(cert), "--key", str(key),
                                      "--allow-principal", pki.client_id)
    out_port = free_port()
    with inbound:
        outbound, out_admin = start_sidecar(
            tmp_path, "outbound", "outbound", "--listen", f"127.0.0.1:{out_port}", "--upstream",
            f"127.0.0.1:{in_port}", "--ca", str(pki.ca_pem), "--cert", str(pki.client_cert), "--key",
            str(pki.client_key), "--peer-id", pki.server_id)

        def resumed(admin: int, listener: str) -> float:
            return metric(admin_get(admin, "/metrics")[1], "secmesh_sidecar_tls_resumed_total", listener=listener)

        def roundtrip(msg: bytes) -> None:
            with socket.create_connection(("127.0.0.1", out_port), timeout=5) as s:
                assert echo_roundtrip(s, msg) == msg

        with outbound:
            roundtrip(b"first")                  # full handshake; its ticket is kept shortly after
            wait_until(lambda: (roundtrip(b"again"), resumed(out_admin, "outbound"))[1] >= 1, timeout=10,
                       what="a resumed handshake")
            assert resumed(in_admin, "inbound") >= 1
            # new server material: new ticket keys, so the next connection cannot resume ...
            new = pki.ca.issue(sa("default", "server"))
            key.write_bytes(new.key_pem)
            cert.write_bytes(new.chain_pem)
            inbound.signal(signal.SIGHUP)
            wait_until(lambda: inbound.output().count('"msg":"certificate applied"') >= 2, timeout=10,
                       what="server cert reloaded")
            before = resumed(in_admin, "inbound")
            with socket.create_connection(("127.0.0.1", out_port), timeout=5) as s:
                assert echo_roundtrip(s, b"after") == b"after"
            assert resumed(in_admin, "inbound") == before
            # ... and it still works, and resumption comes back with the new ticket
            wait_until(lambda: (roundtrip(b"later"), resumed(in_admin, "inbound"))[1] > before, timeout=10,
                       what="resumption with the new ticket")


def test_no_session_resumption_flag(tmp_path, pki, echo):
    inbound, in_admin, in_port = _inbound(tmp_path, pki, echo.address, "--allow-principal", pki.client_id,
                                          "--no-session-resumption")
    with inbound:
        ctx = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
        with tls_connect(in_port, ctx) as s:
            assert echo_roundtrip(s, b"x") == b"x"
            session = s.session
        assert session is None or not session.has_ticket
        raw = socket.create_connection(("127.0.0.1", in_port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            assert echo_roundtrip(s, b"y") == b"y" and not s.session_reused


def test_a_peer_that_reads_nothing_is_cut_after_send_timeout(tmp_path, pki, echo):
    """Slow-read: a client keeps sending to the echo app through the inbound sidecar and never reads
    the echo. Once nothing moves and bytes sit queued for it, `--send-timeout` cuts the connection
    (result `send_timeout`), and other clients keep flowing."""
    inbound, admin, port = _inbound(tmp_path, pki, echo.address, "--allow-principal", pki.client_id,
                                    "--send-timeout", "1s")
    good = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    with inbound:
        hog = tls_connect(port, good)
        hog.settimeout(0.5)
        chunk = b"x" * 65536
        try:
            for _ in range(4096):                # up to 256 MiB; every buffer on the way fills far sooner
                hog.sendall(chunk)
        except (TimeoutError, socket.timeout, ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass

        def cut() -> bool:
            return metric(admin_get(admin, "/metrics")[1], "secmesh_sidecar_connections_total",
                          listener="inbound", result="send_timeout") == 1

        wait_until(cut, timeout=20, what="the slow reader to be cut")
        hog.close()
        other = tls_connect(port, good)
        assert echo_roundtrip(other, b"still here") == b"still here"
        other.close()
