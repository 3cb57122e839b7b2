"""Options the Kubernetes deployment needs: serving-cert DNS names and namespace, an https JWKS with a token.

The JWKS endpoint is a real HTTPS server on loopback that, like the API server's
`/openid/v1/jwks`, answers 401 unless the request carries the bearer token currently in a file.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secmesh.identity.csr import build_csr
from secmesh.identity.keys import generate_p256, private_key_pem
from secmesh.proto import ca_pb2, ca_pb2_grpc
from tests.support.proc import free_port, run_cli, start_cli, tcp_ready, wait_until
from tests.support.proc import test_env as env_with
from tests.support.tokens import TokenIssuer

TD = "example.org"


def tls_server_files(tmp: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server chain, server key) for an https server on 127.0.0.1."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test api-server CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "api-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "api.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "api-key.pem").write_bytes(private_key_pem(key))
    return tmp / "api-ca.pem", tmp / "api.pem", tmp / "api-key.pem"


class JwksServer:
    """HTTPS `/openid/v1/jwks` that wants `Authorization: Bearer <current content of token_file>`."""

    def __init__(self, tmp: Path, jwks: dict) -> None:
        self.ca, cert, key = tls_server_files(tmp)
        self.token_file = tmp / "sa-token"
        self.token_file.write_text("first-token\n")
        self.seen: list[str] = []
        body = json.dumps(jwks).encode()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                auth = self.headers.get("Authorization", "")
                outer.seen.append(auth)
                ok = self.path == "/openid/v1/jwks" and auth == f"Bearer {outer.token_file.read_text().strip()}"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                payload = body if ok else b'{"kind":"Status","code":401}'
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_port}/openid/v1/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[JwksServer, TokenIssuer]]:
    issuer = TokenIssuer()
    server = JwksServer(tmp_path, issuer.jwks())
    yield server, issuer
    server.close()


def _init(tmp: Path) -> tuple[Path, bytes]:
    ca_dir = tmp / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    return ca_dir, run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout.encode()


def _call(port: int, bundle: bytes, token: str) -> ca_pb2.IstioCertificateResponse:
    with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(bundle)) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        request = ca_pb2.IstioCertificateRequest(csr=build_csr(generate_p256(), "spiffe://x/y").decode())
        return stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {token}")], timeout=10)


def test_https_jwks_with_a_bearer_token_file_and_ca(tmp_path: Path, jwks_server) -> None:
    server, issuer = jwks_server
    ca_dir, bundle = _init(tmp_path)
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--workers", "1",
                     "--jwks", server.url, "--jwks-token-file", str(server.token_file), "--jwks-ca", str(server.ca),
                     tmp_path=tmp_path, name="https-jwks")
    try:
        wait_until(tcp_ready("127.0.0.1", port), timeout=30, proc=proc.popen, what="CA port")
        chain = _call(port, bundle, issuer.token("shop", "web")).cert_chain
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/ns/shop/sa/web"]
        assert server.seen and server.seen[-1] == "Bearer first-token"
        assert "first-token" not in proc.output()
    finally:
        assert proc.stop() == 0


def test_https_jwks_with_the_wrong_ca_refuses_tokens(tmp_path: Path, jwks_server) -> None:
    server, issuer = jwks_server
    ca_dir, bundle = _init(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = tls_server_files(tmp_path / "other")
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--workers", "1",
                     "--jwks", server.url, "--jwks-token-file", str(server.token_file), "--jwks-ca", str(other_ca),
                     tmp_path=tmp_path, name="wrong-ca")
    try:
        wait_until(tcp_ready("127.0.0.1", port), timeout=30, proc=proc.popen, what="CA port")
        with pytest.raises(grpc.RpcError) as err:
            _call(port, bundle, issuer.token())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert server.seen == []  # the TLS handshake failed before any token was sent
        assert "CERTIFICATE_VERIFY_FAILED" in proc.output()
    finally:
        assert proc.stop() == 0


def test_jwks_token_file_needs_https(tmp_path: Path) -> None:
    ca_dir, _ = _init(tmp_path)
    (tmp_path / "t").write_text("x")
    result = run_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{free_port()}", "--jwks",
                     "http://127.0.0.1:1/jwks", "--jwks-token-file", str(tmp_path / "t"), timeout=30)
    assert result.returncode == 1 and "https://" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_serving_cert_dns_names_and_namespace(tmp_path: Path, workers: int) -> None:
    ca_dir, bundle = _init(tmp_path)
    (tmp_path / "bundle.pem").write_bytes(bundle)
    port = free_port()
    proc = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
                     "--jwks", str(TokenIssuer().write_jwks(tmp_path / "j.json")),
                     "--server-dns", "secmesh-ca.secmesh-system.svc", "--server-dns", "secmesh-ca.secmesh-system",
                     tmp_path=tmp_path, name="dns", env=env_with(POD_NAMESPACE="secmesh-system"))
    try:
        wait_until(tcp_ready("127.0.0.1", port), timeout=30, proc=proc.popen, what="CA port")
        context = ssl.create_default_context(cafile=str(tmp_path / "bundle.pem"))
        context.set_alpn_protocols(["h2"])
        for _ in range(3 * workers):  # the name an in-cluster client dials verifies on every worker
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="secmesh-ca.secmesh-system.svc") as tls:
                    sans = tls.getpeercert()["subjectAltName"]
            assert ("URI", f"spiffe://{TD}/ns/secmesh-system/sa/secmesh-ca") in sans
            assert ("DNS", "secmesh-ca.secmesh-system") in sans and ("DNS", "localhost") in sans
    finally:
        assert proc.stop() == 0
