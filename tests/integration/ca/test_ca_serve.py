"""`secmesh ca serve` as a process: a real grpcio client over TLS with good and bad tokens and CSRs.

One CA server per module (module-scoped fixture) keeps the runtime small; every test talks to it.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from secmesh.identity.csr import build_csr
from secmesh.identity.keys import generate_p256
from secmesh.proto import ca_pb2, ca_pb2_grpc
from tests.support.proc import free_port, run_cli, start_cli, tcp_ready, wait_until
from tests.support.tokens import DEFAULT_ISSUER, TokenIssuer

TD = "example.org"


class CA:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dir = tmp / "ca"
        result = run_cli("ca", "init", "--trust-domain", TD, "--dir", str(self.dir))
        assert result.returncode == 0, result.stderr
        self.issuer = TokenIssuer()
        self.jwks = self.issuer.write_jwks(tmp / "jwks.json")
        self.port, self.admin_port = free_port(), free_port()
        self.proc = start_cli("ca", "serve", "--dir", str(self.dir), "--listen", f"127.0.0.1:{self.port}",
                              "--jwks", str(self.jwks), "--issuer", DEFAULT_ISSUER, "--max-ttl", "48h",
                              "--admin", f"127.0.0.1:{self.admin_port}", tmp_path=tmp, name="ca-serve")
        wait_until(tcp_ready("127.0.0.1", self.port), proc=self.proc.popen, what="CA gRPC port")
        self.bundle = run_cli("ca", "bundle", "--dir", str(self.dir)).stdout.encode()
        self.channel = grpc.secure_channel(f"127.0.0.1:{self.port}", grpc.ssl_channel_credentials(self.bundle))
        self.stub = ca_pb2_grpc.IstioCertificateServiceStub(self.channel)

    def call(self, csr: str | bytes, token: str | None, ttl: int = 3600) -> ca_pb2.IstioCertificateResponse:
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        csr = csr.decode() if isinstance(csr, bytes) else csr
        return self.stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl),
                                           metadata=metadata, timeout=10)

    def stop(self) -> int | None:
        self.channel.close()
        return self.proc.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    server = CA(tmp_path_factory.mktemp("ca-serve"))
    yield server
    assert server.stop() == 0, server.proc.output()  # SIGTERM → graceful stop, exit 0


def _csr(spiffe_id: str = f"spiffe://{TD}/ns/ignored/sa/ignored") -> bytes:
    return build_csr(generate_p256(), spiffe_id)


def test_issues_a_chain_that_openssl_verifies(ca: CA, tmp_path: Path) -> None:
    response = ca.call(_csr("spiffe://evil.org/ns/kube-system/sa/admin"), ca.issuer.token("payments", "api"))
    chain = list(response.cert_chain)
    assert len(chain) == 3 and all(c.endswith("\n") for c in chain)
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/ns/payments/sa/api"]
    (tmp_path / "leaf.pem").write_text(chain[0])
    (tmp_path / "inter.pem").write_text(chain[1])
    (tmp_path / "root.pem").write_text(chain[2])
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted",
                          str(tmp_path / "inter.pem"), str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert chain[2].encode() in ca.bundle


def test_chain_passes_svid_verify(ca: CA, tmp_path: Path) -> None:
    pytest.importorskip("secmesh.cli.svid")
    chain = ca.call(_csr(), ca.issuer.token("shop", "web")).cert_chain
    (tmp_path / "chain.pem").write_text(chain[0] + chain[1])
    (tmp_path / "bundle.pem").write_bytes(ca.bundle)
    result = run_cli("svid", "verify", "--chain", str(tmp_path / "chain.pem"), "--bundle",
                     f"{TD}={tmp_path / 'bundle.pem'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"valid": True, "spiffe_id": f"spiffe://{TD}/ns/shop/sa/web"}


def _small_rsa_csr() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM))


def _ed25519_csr() -> bytes:
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .sign(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(serialization.Encoding.PEM))


def _badly_signed_csr() -> bytes:
    good = x509.load_pem_x509_csr(_csr())
    other = x509.load_pem_x509_csr(_csr())
    # splice: the first CSR's body with the second CSR's signature
    der = good.tbs_certrequest_bytes
    sig = other.signature
    body = der + bytes([0x30, 0x0A, 0x06, 0x08]) + bytes.fromhex("2a8648ce3d040302")  # ecdsa-with-SHA256
    bitstring = bytes([0x03, len(sig) + 1, 0x00]) + sig
    content = body + bitstring
    return (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(_der_seq(content))
            + b"-----END CERTIFICATE REQUEST-----\n")


def _der_seq(content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 128 else (bytes([0x81, n]) if n < 256 else bytes([0x82, n >> 8, n & 0xFF]))
    return b"\x30" + length + content


BAD_REQUESTS = {
    "no token": (lambda ca: (_csr(), None, 3600), grpc.StatusCode.UNAUTHENTICATED, "token_missing"),
    "expired token": (lambda ca: (_csr(), ca.issuer.token(ttl=-120), 3600), grpc.StatusCode.UNAUTHENTICATED,
                      "token_expired"),
    "foreign issuer": (lambda ca: (_csr(), ca.issuer.token(issuer="https://evil.example"), 3600),
                       grpc.StatusCode.UNAUTHENTICATED, "token_wrong_issuer"),
    "wrong audience": (lambda ca: (_csr(), ca.issuer.token(audience="vault"), 3600),
                       grpc.StatusCode.UNAUTHENTICATED, "token_wrong_audience"),
    "bad signature": (lambda ca: (_csr(), TokenIssuer(kid=ca.issuer.kid).token(), 3600),
                      grpc.StatusCode.UNAUTHENTICATED, "token_bad_signature"),
    "malformed csr": (lambda ca: (b"not a csr", ca.issuer.token(), 3600), grpc.StatusCode.INVALID_ARGUMENT,
                      "malformed_csr"),
    "badly signed csr": (lambda ca: (_badly_signed_csr(), ca.issuer.token(), 3600),
                         grpc.StatusCode.INVALID_ARGUMENT, "bad_csr_signature"),
    "rsa 1024": (lambda ca: (_small_rsa_csr(), ca.issuer.token(), 3600), grpc.StatusCode.INVALID_ARGUMENT,
                 "unsupported_key"),
    "ed25519": (lambda ca: (_ed25519_csr(), ca.issuer.token(), 3600), grpc.StatusCode.INVALID_ARGUMENT,
                "unsupported_key"),
    "ttl over max": (lambda ca: (_csr(), ca.issuer.token(), 72 * 3600), grpc.StatusCode.INVALID_ARGUMENT,
                     "ttl_too_long"),
}


def _metric(ca: CA, reason: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{ca.admin_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'secmesh_ca_requests_rejected_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric for {reason}")


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_the_right_status_and_a_metric(ca: CA, case: str) -> None:
    make, code, reason = BAD_REQUESTS[case]
    before = _metric(ca, reason)
    csr, token, ttl = make(ca)
    with pytest.raises(grpc.RpcError) as err:
        ca.call(csr, token, ttl)
    assert err.value.code() == code, err.value.details()
    if reason == "ttl_too_long":
        assert err.value.details() == "requested TTL 3d is greater than the max allowed TTL 2d"
    assert _metric(ca, reason) == before + 1
    # …and everyone else is still served
    assert len(ca.call(_csr(), ca.issuer.token()).cert_chain) == 3


def test_rejections_are_logged_as_json_without_the_token(ca: CA) -> None:
    token = ca.issuer.token("logs", "check", audience="vault")
    with pytest.raises(grpc.RpcError):
        ca.call(_csr(), token)

    def logged() -> bool:
        return any(json.loads(line).get("token", {}).get("sub") == "system:serviceaccount:logs:check"
                   for line in ca.proc.output().splitlines() if line.startswith("{"))
    wait_until(logged, timeout=5, what="rejection log line")
    assert token not in ca.proc.output()
    line = next(json.loads(l) for l in ca.proc.output().splitlines()
                if l.startswith("{") and "logs:check" in l)
    assert line["reason"] == "token_wrong_audience" and line["status"] == "UNAUTHENTICATED"
    assert set(line["token"]) == {"iss", "sub", "exp"}


def test_serving_cert_is_issued_by_the_ca_over_tls13(ca: CA, tmp_path: Path) -> None:
    (tmp_path / "bundle.pem").write_bytes(ca.bundle)
    context = ssl.create_default_context(cafile=str(tmp_path / "bundle.pem"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", ca.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            cert = tls.getpeercert()
    sans = cert["subjectAltName"]
    assert ("URI", f"spiffe://{TD}/ns/istio-system/sa/secmesh-ca") in sans
    assert ("DNS", "localhost") in sans and ("IP Address", "127.0.0.1") in sans


def test_admin_ready_and_issuance_log(ca: CA) -> None:
    ready = urllib.request.urlopen(f"http://127.0.0.1:{ca.admin_port}/ready", timeout=5)
    assert ready.status == 200
    ca.call(_csr(), ca.issuer.token("ledger", "row"))
    listed = json.loads(run_cli("ca", "list", "--dir", str(ca.dir), "--json").stdout)
    assert any(r["spiffe_id"] == f"spiffe://{TD}/ns/ledger/sa/row" and r["subject"] ==
               "system:serviceaccount:ledger:row" for r in listed)
    assert any(r["subject"] == "secmesh-ca" for r in listed)  # its own serving cert is logged too


def test_revoked_leaf_appears_in_a_crl_openssl_parses(ca: CA, tmp_path: Path) -> None:
    leaf = x509.load_pem_x509_certificate(ca.call(_csr(), ca.issuer.token("crl", "me")).cert_chain[0].encode())
    serial = format(leaf.serial_number, "x")
    revoked = run_cli("ca", "revoke", serial, "--reason", "keyCompromise", "--dir", str(ca.dir))
    assert revoked.returncode == 0, revoked.stderr
    crl = run_cli("ca", "crl", "--dir", str(ca.dir))
    (tmp_path / "crl.pem").write_text(crl.stdout)
    text = subprocess.run(["openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text"],
                          capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert serial.upper() in text.stdout.replace(":", "") and "Key Compromise" in text.stdout
    assert "secmesh intermediate CA G1" in text.stdout


def test_bad_permissions_refuse_to_start(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    (ca_dir / "root-key.pem").chmod(0o644)
    result = run_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{free_port()}",
                     "--jwks", str(TokenIssuer().write_jwks(tmp_path / "j.json")), timeout=30)
    assert result.returncode == 1
    assert "readable by group or others" in result.stderr


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--jwks",
                     str(TokenIssuer().write_jwks(tmp_path / "j.json")), tmp_path=tmp_path, name="sigterm")
    try:
        wait_until(tcp_ready("127.0.0.1", port), proc=proc.popen, what="CA port")
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0
        assert "Exception ignored" not in proc.output() and "Traceback" not in proc.output()
    finally:
        proc.stop()


def _served_serial(port: int, cafile: Path) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("workers", [1, 2])
def test_serving_cert_is_renewed_without_restart(tmp_path: Path, workers: int) -> None:
    from tests.support.proc import test_env

    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    (tmp_path / "bundle.pem").write_text(run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout)
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--jwks",
                     str(TokenIssuer().write_jwks(tmp_path / "j.json")), "--workers", str(workers),
                     tmp_path=tmp_path, name="renew", env=test_env(SECMESH_CA_SERVER_CERT_TTL="5s"))
    try:
        wait_until(tcp_ready("127.0.0.1", port), proc=proc.popen, what="CA port")
        seen = {_served_serial(port, tmp_path / "bundle.pem")}

        def renewed_everywhere() -> bool:
            seen.add(_served_serial(port, tmp_path / "bundle.pem"))
            lines = [json.loads(l) for l in proc.output().splitlines() if l.startswith("{")]
            renewed = {l.get("worker") for l in lines if l["msg"] == "serving certificate renewed"}
            return len(renewed) == workers and len(seen) > workers
        # every worker renews its own certificate; new handshakes get the new ones
        wait_until(renewed_everywhere, timeout=15, interval=0.2, proc=proc.popen, what="renewed serving certificates")
    finally:
        assert proc.stop() == 0


def test_jwks_from_a_url(tmp_path: Path) -> None:
    import http.server
    import threading

    issuer = TokenIssuer()
    body = json.dumps(issuer.jwks()).encode()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    bundle = run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout.encode()
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--jwks",
                     f"http://127.0.0.1:{httpd.server_port}/jwks", tmp_path=tmp_path, name="url-jwks")
    try:
        wait_until(tcp_ready("127.0.0.1", port), proc=proc.popen, what="CA port")
        with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(bundle)) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            request = ca_pb2.IstioCertificateRequest(csr=_csr().decode())
            response = stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {issuer.token()}")],
                                              timeout=10)
            assert len(response.cert_chain) == 3
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {TokenIssuer().token()}")],
                                       timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert hits and all(h == "/jwks" for h in hits)
    finally:
        httpd.shutdown()
        assert proc.stop() == 0
