"""A running `ca serve` follows `ca rotate`: new intermediate and bundle in responses, new serving cert."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secmesh.identity.csr import build_csr
from secmesh.identity.keys import generate_p256
from secmesh.proto import ca_pb2, ca_pb2_grpc
from tests.support.proc import free_port, run_cli, start_cli, tcp_ready, wait_until
from tests.support.tokens import TokenIssuer

TD = "example.org"


def _call(port: int, bundle: bytes, token: str) -> list[str]:
    with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(bundle),
                             options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        request = ca_pb2.IstioCertificateRequest(csr=build_csr(generate_p256(), "spiffe://x/y").decode())
        return list(stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {token}")],
                                           timeout=10).cert_chain)


def _issuer_cn(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.subject.rfc4514_string()


def _openssl_verify(tmp: Path, name: str, chain: list[str], cafile: Path) -> subprocess.CompletedProcess[str]:
    (tmp / f"{name}-leaf.pem").write_text(chain[0])
    (tmp / f"{name}-inter.pem").write_text(chain[1])
    return subprocess.run(["openssl", "verify", "-CAfile", str(cafile), "-untrusted", str(tmp / f"{name}-inter.pem"),
                           str(tmp / f"{name}-leaf.pem")], capture_output=True, text=True)


def _serving_chain_verifies(port: int, cafile: Path) -> bool:
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return True
    except ssl.SSLError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_follows_a_rotation_without_restart(tmp_path: Path, workers: int) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    old_bundle = run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout.encode()
    issuer = TokenIssuer()
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--jwks",
                     str(issuer.write_jwks(tmp_path / "j.json")), "--workers", str(workers), "--reload-interval",
                     "200ms", tmp_path=tmp_path, name="reload")
    try:
        wait_until(tcp_ready("127.0.0.1", port), timeout=30, proc=proc.popen, what="CA port")
        before = _call(port, old_bundle, issuer.token())
        assert "G1" in _issuer_cn(before[1]) and len(x509.load_pem_x509_certificates(before[2].encode())) == 1

        rotated = run_cli("ca", "rotate", "--dir", str(ca_dir))
        assert rotated.returncode == 0, rotated.stderr
        new_bundle = run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout
        (tmp_path / "both.pem").write_text(new_bundle)
        new_root = x509.load_pem_x509_certificates(new_bundle.encode())[0]
        (tmp_path / "new-root.pem").write_bytes(new_root.public_bytes(serialization.Encoding.PEM))

        def every_worker_reloaded() -> bool:
            lines = [json.loads(l) for l in proc.output().splitlines() if l.startswith("{")]
            return sum(l["msg"] == "CA reloaded" for l in lines) == workers
        wait_until(every_worker_reloaded, timeout=15, proc=proc.popen, what="CA reloaded in every worker")

        for _ in range(4 * workers):  # new connections reach every worker
            after = _call(port, new_bundle.encode(), issuer.token())
            assert "G2" in _issuer_cn(after[1])
            # the last element is the whole bundle (new root first, old root kept until it expires)
            assert after[2] == new_bundle
        verified = _openssl_verify(tmp_path, "new", after, tmp_path / "new-root.pem")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # leaves issued before the rotation keep verifying against the bundle the CA now hands out
        verified_old = _openssl_verify(tmp_path, "old", before, tmp_path / "both.pem")
        assert verified_old.returncode == 0, verified_old.stdout + verified_old.stderr
        # the CA's own serving certificate moved to the new intermediate: a client trusting only the new root connects
        assert all(_serving_chain_verifies(port, tmp_path / "new-root.pem") for _ in range(4 * workers))
        listed = json.loads(run_cli("ca", "list", "--dir", str(ca_dir), "--json").stdout)
        assert len({r["issuer_kid"] for r in listed}) == 2
    finally:
        assert proc.stop() == 0


def test_a_broken_directory_keeps_the_old_signer(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    bundle = run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout.encode()
    issuer = TokenIssuer()
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--jwks",
                     str(issuer.write_jwks(tmp_path / "j.json")), "--workers", "1", "--reload-interval", "200ms",
                     tmp_path=tmp_path, name="broken")
    try:
        wait_until(tcp_ready("127.0.0.1", port), timeout=30, proc=proc.popen, what="CA port")
        (ca_dir / "intermediate-key.pem").chmod(0o644)  # what the CA refuses at start, it refuses on reload too
        meta = ca_dir / "ca.json"
        meta.write_text(meta.read_text().replace('"generation": 1', '"generation": 1 '))
        wait_until(lambda: "CA reload failed" in proc.output(), timeout=10, proc=proc.popen, what="reload failure")
        assert "readable by group or others" in proc.output()
        assert "G1" in _issuer_cn(_call(port, bundle, issuer.token())[1])
    finally:
        assert proc.stop() == 0
