"""`secmesh ca serve --workers N`: N processes on one port, one ledger, one admin port, clean stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from secmesh.identity.csr import build_csr
from secmesh.identity.keys import generate_p256
from secmesh.proto import ca_pb2, ca_pb2_grpc
from tests.support.proc import Process, free_port, run_cli, start_cli, tcp_ready, wait_until
from tests.support.tokens import TokenIssuer

TD = "example.org"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in metrics")


def _served_serial(port: int, bundle: Path) -> int:
    context = ssl.create_default_context(cafile=str(bundle))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


class Fleet:
    def __init__(self, tmp: Path, workers: int = 2) -> None:
        self.dir = tmp / "ca"
        assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(self.dir)).returncode == 0
        self.issuer = TokenIssuer()
        self.bundle_path = tmp / "bundle.pem"
        self.bundle_path.write_text(run_cli("ca", "bundle", "--dir", str(self.dir)).stdout)
        self.port, self.admin = free_port(), free_port()
        self.proc: Process = start_cli("ca", "serve", "--dir", str(self.dir), "--listen", f"127.0.0.1:{self.port}",
                                       "--jwks", str(self.issuer.write_jwks(tmp / "jwks.json")), "--admin",
                                       f"127.0.0.1:{self.admin}", "--workers", str(workers), tmp_path=tmp,
                                       name="fleet")
        wait_until(lambda: _http_ok(self.admin, "/ready"), timeout=30, proc=self.proc.popen, what="fleet /ready")
        self.workers = _children(self.proc.pid)

    def call(self, ns: str = "default") -> ca_pb2.IstioCertificateResponse:
        creds = grpc.ssl_channel_credentials(self.bundle_path.read_bytes())
        # a fresh channel each time (own subchannel pool) = a new connection the kernel may send anywhere
        with grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(ch)
            request = ca_pb2.IstioCertificateRequest(csr=build_csr(generate_p256(), "spiffe://x/y").decode())
            return stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {self.issuer.token(ns)}")],
                                          timeout=10)


def _http_ok(port: int, path: str) -> bool:
    try:
        return _http(port, path)[0] == 200
    except OSError:
        return False


@pytest.fixture
def fleet(tmp_path: Path):
    f = Fleet(tmp_path)
    yield f
    f.proc.stop()
    _kill_leftovers(f.workers)


def test_workers_share_the_port_the_ledger_and_the_metrics(fleet: Fleet) -> None:
    assert len(fleet.workers) == 2 and all(_alive(p) for p in fleet.workers)
    serials = {_served_serial(fleet.port, fleet.bundle_path) for _ in range(40)}
    assert len(serials) == 2  # the kernel spread 40 connections over both workers' serving certificates
    before = _metric(_http(fleet.admin, "/metrics")[1], "secmesh_ca_certificates_issued_total")
    for i in range(12):
        assert len(fleet.call(f"ns{i}").cert_chain) == 3
    text = _http(fleet.admin, "/metrics")[1]
    assert _metric(text, "secmesh_ca_certificates_issued_total") == before + 12
    assert _metric(text, "secmesh_ca_workers") == 2
    assert _metric(text, "secmesh_ca_server_cert_expiry_seconds") > 0
    listed = json.loads(run_cli("ca", "list", "--dir", str(fleet.dir), "--json").stdout)
    assert {r["spiffe_id"] for r in listed} >= {f"spiffe://{TD}/ns/ns{i}/sa/default" for i in range(12)}
    assert sum(r["subject"] == "secmesh-ca" for r in listed) == 2  # one serving certificate per worker


def test_sigterm_stops_every_worker(fleet: Fleet) -> None:
    workers = list(fleet.workers)
    assert fleet.proc.stop() == 0
    assert not any(_alive(p) for p in workers)
    out = fleet.proc.output()
    assert "Traceback" not in out
    assert sum('"msg":"CA stopping"' in line for line in out.splitlines()) == 2


def test_a_dead_worker_is_restarted(fleet: Fleet) -> None:
    victim = fleet.workers[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len([p for p in _children(fleet.proc.pid) if p != victim and _alive(p)]) == 2
               and _http_ok(fleet.admin, "/ready"), timeout=30, proc=fleet.proc.popen, what="a restarted worker")
    fleet.workers = _children(fleet.proc.pid)
    assert _metric(_http(fleet.admin, "/metrics")[1], "secmesh_ca_worker_restarts_total") == 1
    for _ in range(6):
        assert len(fleet.call().cert_chain) == 3
    assert "worker exited; restarting" in fleet.proc.output()


def test_workers_follow_a_killed_parent(fleet: Fleet) -> None:
    workers = list(fleet.workers)
    os.kill(fleet.proc.pid, signal.SIGKILL)
    fleet.proc.popen.wait(10)
    wait_until(lambda: not any(_alive(p) for p in workers), timeout=15, what="orphaned workers to exit")


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{port}", "--workers", "2",
                         "--jwks", str(TokenIssuer().write_jwks(tmp_path / "j.json")), timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_one_worker_serves_in_process(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, workers=1)
    try:
        assert fleet.workers == []
        assert len(fleet.call().cert_chain) == 3
    finally:
        assert fleet.proc.stop() == 0
    assert tcp_ready("127.0.0.1", fleet.port)() is False
