"""deploy/k8s/base/fetch-jwks.py (the CA's and agent's init container) against a real HTTPS server.

The server stands in for the API server's `/openid/v1/jwks`: TLS with a private CA (the
cluster CA in `ca.crt`), and a bearer token required, as Kubernetes requires for service
accounts bound to `system:service-account-issuer-discovery`.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from secmesh.identity.keys import generate_p256, private_key_pem
from tests.support.proc import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "k8s" / "base" / "fetch-jwks.py"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.e30.c2VjcmV0LXNpZ25hdHVyZQ"
JWKS = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "AQ", "y": "Ag", "use": "sig", "alg": "ES256"}]}


def _cert(subject: str, issuer_key, issuer_name: str, key, *, ca: bool, san: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, leaf_key, other_key = generate_p256(), generate_p256(), generate_p256()
    ca = _cert("cluster CA", ca_key, "cluster CA", ca_key, ca=True)
    leaf = _cert("kube-apiserver", ca_key, "cluster CA", leaf_key, ca=False, san="localhost")
    other = _cert("someone else", other_key, "someone else", other_key, ca=True)
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "other.pem").write_bytes(_pem(other))
    (d / "server.pem").write_bytes(_pem(leaf) + private_key_pem(leaf_key))
    return {"ca": d / "ca.pem", "other": d / "other.pem", "server": d / "server.pem"}


@pytest.fixture(scope="module")
def server(pki: dict[str, Path]) -> Iterator[dict]:
    state: dict = {"body": JWKS, "seen_auth": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state["seen_auth"].append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_error(401)
                return
            body = json.dumps(state["body"]).encode()
            self.send_response(200 if self.path == "/openid/v1/jwks" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"])
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"https://localhost:{httpd.server_address[1]}/openid/v1/jwks"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _run(tmp_path: Path, url: str, ca: Path, token: str = TOKEN) -> tuple[subprocess.CompletedProcess[str], Path]:
    sa = tmp_path / "sa"
    sa.mkdir(exist_ok=True)
    (sa / "ca.crt").write_bytes(ca.read_bytes())
    (sa / "token").write_text(token + "\n")
    out = tmp_path / "jwks" / "jwks.json"
    out.parent.mkdir(exist_ok=True)
    env = {"JWKS_URL": url, "SA_DIR": str(sa), "ATTEMPTS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=30)
    return proc, out


def test_fetches_with_the_service_account_token_over_the_cluster_ca(tmp_path: Path, server: dict,
                                                                    pki: dict[str, Path]) -> None:
    server["body"] = JWKS
    proc, out = _run(tmp_path, server["url"], pki["ca"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == JWKS
    assert json.loads(proc.stderr.splitlines()[-1])["msg"] == "JWKS written"
    assert server["seen_auth"][-1] == f"Bearer {TOKEN}"
    assert TOKEN not in proc.stderr + proc.stdout
    assert not list(out.parent.glob("*.tmp"))


def test_a_rejected_token_fails_without_writing(tmp_path: Path, server: dict, pki: dict[str, Path]) -> None:
    proc, out = _run(tmp_path, server["url"], pki["ca"], token="wrong-token")
    assert proc.returncode == 1 and not out.exists()
    assert "401" in proc.stderr and "wrong-token" not in proc.stderr


def test_a_server_outside_the_cluster_ca_is_refused(tmp_path: Path, server: dict, pki: dict[str, Path]) -> None:
    requests_before = len(server["seen_auth"])
    proc, out = _run(tmp_path, server["url"], pki["other"])
    assert proc.returncode == 1 and not out.exists()
    assert "CERTIFICATE_VERIFY_FAILED" in proc.stderr
    assert len(server["seen_auth"]) == requests_before  # the token never reached an unverified server


def test_an_empty_key_set_is_an_error(tmp_path: Path, server: dict, pki: dict[str, Path]) -> None:
    server["body"] = {"keys": []}
    try:
        proc, out = _run(tmp_path, server["url"], pki["ca"])
    finally:
        server["body"] = JWKS
    assert proc.returncode == 1 and not out.exists()
    assert "not a JWKS" in proc.stderr


def test_usage(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr
