"""`secmesh sidecar --config`: PeerAuthentication modes, hot rotation from files, bad material, workers."""

from __future__ import annotations

import json
import socket
import textwrap

import pytest

from tests.integration.sidecar.harness import (admin_get, client_context, echo_roundtrip, metric, start_sidecar,
                                               tls_connect)
from tests.integration.sidecar.pki import sa
from tests.support.proc import free_port, run_cli, wait_until

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path, pki, echo, *, modes=("STRICT", "PERMISSIVE", "DISABLE"), workers=1, files=None) -> tuple:
    cert, key, bundle = files or (pki.server_cert, pki.server_key, pki.ca_pem)
    ports = {m: free_port() for m in modes}
    listeners = "".join(textwrap.dedent(f"""
          - name: in-{m.lower()}
            address: 127.0.0.1:{ports[m]}
            upstream: {echo.address}
            mtls_mode: {m}
            {'allow_principals: ["spiffe://cluster.local/ns/default/**"]' if m == "STRICT" else "allow_all: true"}
        """) for m in modes)
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(f"""
        trust_domain: cluster.local
        workers: {workers}
        certs:
          source: file
          file:
            cert: {cert}
            key: {key}
            bundle: {bundle}
            poll_interval: 100ms
        listeners:""") + textwrap.indent(listeners, "  "))
    return path, ports


def test_peer_authentication_modes(tmp_path, pki, echo):
    path, ports = _config(tmp_path, pki, echo)
    proc, admin = start_sidecar(tmp_path, "sidecar", "--config", str(path))
    good = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    with proc:
        # STRICT: mTLS works, plaintext is refused before reaching the app
        with tls_connect(ports["STRICT"], good) as s:
            assert echo_roundtrip(s, b"strict-tls") == b"strict-tls"
        before = echo.connections
        with socket.create_connection(("127.0.0.1", ports["STRICT"]), timeout=5) as s:
            s.sendall(b"plain")
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
        assert echo.connections == before
        # PERMISSIVE: both, decided from the first bytes, nothing lost
        with tls_connect(ports["PERMISSIVE"], good) as s:
            assert echo_roundtrip(s, b"permissive-tls") == b"permissive-tls"
        with socket.create_connection(("127.0.0.1", ports["PERMISSIVE"]), timeout=5) as s:
            assert echo_roundtrip(s, b"permissive-plain") == b"permissive-plain"
            s.shutdown(socket.SHUT_WR)        # plain <-> plain: half-close is passed on
            assert s.recv(10) == b""
        # DISABLE: plaintext passes through
        with socket.create_connection(("127.0.0.1", ports["DISABLE"]), timeout=5) as s:
            assert echo_roundtrip(s, b"disabled") == b"disabled"
        _, text = admin_get(admin, "/metrics")
        assert metric(text, "secmesh_sidecar_handshake_failures_total", listener="in-strict", reason="not_tls") == 1
        status, dump = admin_get(admin, "/config_dump")
        assert status == 200 and json.loads(dump)["listeners"][1]["mtls_mode"] == "PERMISSIVE"


def test_rotation_mid_connection_and_bad_material_keeps_last_good(tmp_path, pki, echo):
    d = tmp_path / "certs"
    d.mkdir()
    cert, key = pki.server.write(d, "server")
    bundle = pki.ca.write(d, "bundle")
    path, ports = _config(tmp_path, pki, echo, modes=("STRICT",), files=(cert, key, bundle))
    proc, admin = start_sidecar(tmp_path, "sidecar", "--config", str(path))
    good = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    port = ports["STRICT"]

    def served_serial() -> int:
        with tls_connect(port, good) as s:
            from cryptography import x509

            serial = x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number
            assert echo_roundtrip(s, b"probe") == b"probe"
            return serial

    with proc:
        old = served_serial()
        assert old == pki.server.cert.serial_number
        long_lived = tls_connect(port, good)
        assert echo_roundtrip(long_lived, b"before rotation") == b"before rotation"
        # rotate: a new key and cert for the same identity (written key first, as the agent does)
        new = pki.ca.issue(sa("default", "server"))
        key.write_bytes(new.key_pem)
        cert.write_bytes(new.chain_pem)
        wait_until(lambda: served_serial() == new.cert.serial_number, timeout=10, what="new cert served")
        assert echo_roundtrip(long_lived, b"after rotation") == b"after rotation"   # not dropped
        # bad material: a cert whose key is elsewhere -> refused, last good kept
        other = pki.ca.issue(sa("default", "server"))
        cert.write_bytes(other.chain_pem)
        wait_until(lambda: "key_mismatch" in (json.loads(admin_get(admin, "/certs")[1])["last_error"] or ""),
                   timeout=10, what="mismatch reported")
        assert served_serial() == new.cert.serial_number
        assert echo_roundtrip(long_lived, b"still here") == b"still here"
        long_lived.close()
        _, text = admin_get(admin, "/metrics")
        assert metric(text, "secmesh_sidecar_cert_updates_total", source="file", result="rejected") >= 1
        assert metric(text, "secmesh_sidecar_cert_updates_total", source="file", result="applied") >= 2
        assert 0 < metric(text, "secmesh_sidecar_cert_expiry_seconds", kind="leaf") <= 86400
    out = proc.output()
    assert "PRIVATE KEY" not in out


def test_workers_share_the_port(tmp_path, pki, echo):
    path, ports = _config(tmp_path, pki, echo, modes=("STRICT",), workers=2)
    proc, _admin = start_sidecar(tmp_path, "sidecar", "--config", str(path))
    good = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    with proc:
        for i in range(6):
            with tls_connect(ports["STRICT"], good) as s:
                assert echo_roundtrip(s, b"w%d" % i) == b"w%d" % i
        wait_until(lambda: proc.output().count("sidecar ready") == 2, timeout=10, what="both workers ready")
        ready = [json.loads(line) for line in proc.output().splitlines() if '"sidecar ready"' in line]
        assert sorted(r["worker"] for r in ready) == [0, 1]
    assert proc.popen.returncode == 0


def test_bad_config_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - name: a\n    address: 127.0.0.1:1\n    upstream: 127.0.0.1:2\n    mtls_mod: STRICT\n")
    r = run_cli("sidecar", "--config", str(path))
    assert r.returncode == 2
    assert f"{path}:5:5" in r.stderr and "mtls_mode" in r.stderr
