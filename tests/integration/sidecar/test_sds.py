"""The sidecar as an SDS v3 client of a real gRPC SDS server on a UDS: warm-up, ACK/NACK, rotation, agent loss."""

from __future__ import annotations

import shutil
import socket
import tempfile
import textwrap
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.sidecar.harness import (admin_get, client_context, echo_roundtrip, metric, start_sidecar,
                                               tls_connect, wait_ready)
from tests.integration.sidecar.pki import sa
from tests.integration.sidecar.sds_server import SdsTestServer
from tests.support.proc import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sock_dir():
    d = Path(tempfile.mkdtemp(prefix="sds-", dir="/tmp"))   # UDS paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_sds_warmup_ack_nack_rotation_and_agent_loss(tmp_path, pki, echo, sock_dir):
    sock = sock_dir / "socket"
    port = free_port()
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(textwrap.dedent(f"""
        workers: 1
        certs:
          source: sds
          sds: {{socket: {sock}, backoff_initial: 100ms, backoff_max: 400ms}}
        listeners:
          - name: inbound
            address: 127.0.0.1:{port}
            upstream: {echo.address}
            allow_principals: [{pki.client_id}]
        """))
    proc, admin = start_sidecar(tmp_path, "sidecar", "--config", str(cfg), ready=False)
    good = client_context(pki.ca_pem, pki.client_cert, pki.client_key)

    def served_serial() -> int:
        with tls_connect(port, good) as s:
            serial = x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number
            assert echo_roundtrip(s, b"probe") == b"probe"
            return serial

    server = SdsTestServer(sock)
    with proc:
        try:
            # no agent yet: admin answers 503 and the data port is not open
            wait_until(lambda: admin_get(admin, "/ready")[0] == 503, timeout=15, what="admin 503", proc=proc.popen)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            server.set_cert(pki.server.chain_pem, pki.server.key_pem)
            server.set_roots(pki.ca.pem)
            server.start()
            wait_ready(admin, proc)
            assert served_serial() == pki.server.cert.serial_number
            wait_until(lambda: len(server.acks()) >= 1, timeout=5, what="ACK")
            first = server.requests[0]
            assert sorted(first.resource_names) == ["ROOTCA", "default"] and first.node.id
            long_lived = tls_connect(port, good)
            assert echo_roundtrip(long_lived, b"one") == b"one"

            # a push whose key does not match its cert: NACK, last good kept
            bad = pki.ca.issue(sa("default", "server"))
            server.set_cert(bad.chain_pem, pki.server.key_pem)
            server.push("default")
            wait_until(lambda: len(server.nacks()) == 1, timeout=5, what="NACK")
            nack = server.nacks()[0]
            assert "does not match" in nack.error_detail.message and nack.version_info == server.acks()[-1].version_info
            assert served_serial() == pki.server.cert.serial_number

            # rotation: new handshakes get the new cert, the open connection carries on
            new = pki.ca.issue(sa("default", "server"))
            server.set_cert(new.chain_pem, new.key_pem)
            server.push("default")
            wait_until(lambda: served_serial() == new.cert.serial_number, timeout=5, what="rotated cert served")
            assert echo_roundtrip(long_lived, b"two") == b"two"

            # agent down: keep serving with the last good cert, count the loss
            server.stop()
            assert served_serial() == new.cert.serial_number
            assert echo_roundtrip(long_lived, b"three") == b"three"
            wait_until(lambda: metric(admin_get(admin, "/metrics")[1], "secmesh_sidecar_sds_disconnects_total") >= 1,
                       timeout=5, what="disconnect counted")
            assert admin_get(admin, "/ready")[0] == 200

            # agent back (a new process would serve a newer cert): reconnect with backoff, pick it up
            newer = pki.ca.issue(sa("default", "server"))
            server = SdsTestServer(sock)
            server.set_cert(newer.chain_pem, newer.key_pem)
            server.set_roots(pki.ca.pem)
            server.start()
            wait_until(lambda: served_serial() == newer.cert.serial_number, timeout=10, what="reconnected")
            assert echo_roundtrip(long_lived, b"four") == b"four"
            long_lived.close()
            text = admin_get(admin, "/metrics")[1]
            assert metric(text, "secmesh_sidecar_sds_nacks_total", reason="key_mismatch") == 1
            assert metric(text, "secmesh_sidecar_sds_updates_total") >= 3
        finally:
            server.stop()
    assert "PRIVATE KEY" not in proc.output()
