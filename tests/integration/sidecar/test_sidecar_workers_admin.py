"""`secmesh sidecar --workers 2`: /metrics, /ready and /live speak for the whole sidecar, not worker 0.

Real parts: the CLI as a process (supervisor + 2 forked workers), real mTLS clients (Python ssl
and curl) spread over both workers by SO_REUSEPORT, a real kill -9 of a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.integration.sidecar.harness import (admin_get, client_context, echo_roundtrip, metric, tls_connect,
                                               wait_ready)
from tests.support.proc import free_port, start_cli, wait_until

pytestmark = pytest.mark.timeout(120)
PAYLOAD = b"x" * 1000


def _config(path: Path, certdir: Path, pki, echo, web, *, admin: int, ports: tuple[int, int]) -> Path:
    path.write_text(
        f"workers: 2\n"
        f"drain_timeout: 2s\n"
        f'admin: {{address: "127.0.0.1:{admin}"}}\n'
        f"certs: {{source: file, file: {{cert: {certdir}/cert.pem, key: {certdir}/key.pem, "
        f"bundle: {certdir}/ca.pem, poll_interval: 0.1s}}}}\n"
        f"listeners:\n"
        f'  - {{name: echo, address: "127.0.0.1:{ports[0]}", upstream: "{echo.address}", allow_all: true}}\n'
        f'  - {{name: web, address: "127.0.0.1:{ports[1]}", upstream: "{web.address}", allow_all: true}}\n')
    return path


def _install_certs(pki, certdir: Path) -> None:
    """Key and bundle first, the cert last (each by rename), so a poll never sees a mismatched pair."""
    for src, name in ((pki.server_key, "key.pem"), (pki.ca_pem, "ca.pem"), (pki.server_cert, "cert.pem")):
        shutil.copy(src, certdir / f".{name}")
        os.replace(certdir / f".{name}", certdir / name)


def _log_lines(proc, msg: str) -> list[dict]:
    out = []
    for line in proc.output().splitlines():
        if f'"msg":"{msg}"' in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def _echo_clients(port: int, ctx, n: int, *, timeout: float = 5.0, threads: int = 4) -> list[str]:
    """n mTLS connections (one exchange of PAYLOAD each) from `threads` threads; returns the failures."""
    failures: list[str] = []
    counter = iter(range(n))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                with tls_connect(port, ctx, timeout=timeout) as s:
                    if echo_roundtrip(s, PAYLOAD) != PAYLOAD:
                        failures.append(f"{i}: short echo")
            except OSError as exc:
                failures.append(f"{i}: {exc!r}")

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    return failures


def _curl(port: int, pki, n: int) -> list[str]:
    """n HTTPS requests from one curl, each on its own connection (`Connection: close`)."""
    url = f"https://127.0.0.1:{port}/ok"
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca_pem), "--cert", str(pki.client_cert),
                        "--key", str(pki.client_key), "-H", "Connection: close", "-w", "%{http_code}\n",
                        *(["-o", "/dev/null", url] * n)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _totals(admin: int) -> dict[str, float]:
    status, text = admin_get(admin, "/metrics")
    assert status == 200
    return {
        "echo": metric(text, "secmesh_sidecar_connections_total", listener="echo", result="accepted"),
        "web": metric(text, "secmesh_sidecar_connections_total", listener="web", result="accepted"),
        "up": metric(text, "secmesh_sidecar_bytes_total", listener="echo", direction="upstream"),
        "down": metric(text, "secmesh_sidecar_bytes_total", listener="echo", direction="downstream"),
        "authz": metric(text, "secmesh_sidecar_authz_decisions_total", decision="allow"),
        "active": metric(text, "secmesh_sidecar_active_connections"),
        "ready": metric(text, "secmesh_sidecar_ready"),
        "leaf_ttl": metric(text, "secmesh_sidecar_cert_expiry_seconds", kind="leaf"),
    }


def _per_worker_accepted(runtime_dir: str, pid: int, tmp_path: Path) -> float:
    """One worker's share, from its own multiprocess counter file (copied alone into a directory)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    one = tmp_path / f"w{pid}"
    one.mkdir()
    shutil.copy(Path(runtime_dir) / f"counter_{pid}.db", one)
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(one))
    return metric(generate_latest(reg).decode(), "secmesh_sidecar_connections_total", result="accepted")


def _kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_two_workers_report_as_one_sidecar(tmp_path, pki, echo, http_backend):
    certdir = tmp_path / "certs"
    certdir.mkdir()
    admin, ports = free_port(), (free_port(), free_port())
    cfg = _config(tmp_path / "s.yaml", certdir, pki, echo, http_backend, admin=admin, ports=ports)
    ctx = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    proc = start_cli("sidecar", "--config", str(cfg), tmp_path=tmp_path, name="sidecar")
    pids: list[int] = []
    try:
        wait_until(lambda: _log_lines(proc, "workers started"), timeout=20, what="workers", proc=proc.popen)
        pids += _log_lines(proc, "workers started")[0]["pids"]
        runtime_dir = _log_lines(proc, "runtime directory (readiness, metrics)")[0]["runtime_dir"]
        assert len(pids) == 2 and (os.stat(runtime_dir).st_mode & 0o777) == 0o700
        # no certificate yet: alive (supervisor and both workers), not ready
        wait_until(lambda: admin_get(admin, "/live")[0] == 200, timeout=20, what="/live", proc=proc.popen)
        assert admin_get(admin, "/ready")[0] == 503

        # worker 1 frozen: worker 0 gets the certificate and serves, but the sidecar is not ready
        os.kill(pids[1], signal.SIGSTOP)
        try:
            _install_certs(pki, certdir)
            wait_until(lambda: any(r["worker"] == 0 for r in _log_lines(proc, "sidecar ready")), timeout=20,
                       what="worker 0 ready", proc=proc.popen)
            status, body = admin_get(admin, "/ready")
            assert (status, body) == (503, f"not ready: worker 1 (pid {pids[1]})\n")
        finally:
            os.kill(pids[1], signal.SIGCONT)
        wait_ready(admin, proc)
        assert admin_get(admin, "/live")[0] == 200

        # load over both workers: the totals are what the clients did, whichever worker served them
        assert not _echo_clients(ports[0], ctx, 40)
        assert _curl(ports[1], pki, 20) == ["200"] * 20
        want = {"echo": 40, "web": 20, "up": 40 * len(PAYLOAD), "down": 40 * len(PAYLOAD), "authz": 60}
        wait_until(lambda: {k: _totals(admin)[k] for k in want} == want and _totals(admin)["active"] == 0,
                   timeout=20, what=f"totals {want} (now {_totals(admin)})", proc=proc.popen)
        t = _totals(admin)
        assert t["ready"] == 1 and 3000 < t["leaf_ttl"] <= 86400
        shares = [_per_worker_accepted(runtime_dir, pid, tmp_path) for pid in pids]
        assert sum(shares) == 60 and min(shares) > 0, shares      # SO_REUSEPORT spread them

        # kill -9 worker 1: restarted on the same socket; connections queued meanwhile wait for it
        os.kill(pids[1], signal.SIGKILL)
        failures = _echo_clients(ports[0], ctx, 20, timeout=20)
        assert not failures, failures[:5]
        wait_until(lambda: _log_lines(proc, "worker restarted"), timeout=20, what="restart", proc=proc.popen)
        restarted = _log_lines(proc, "worker restarted")[0]
        assert restarted["worker"] == 1 and restarted["pid"] != pids[1]
        wait_ready(admin, proc)
        # the dead worker's counts stay in the totals (its counter file is kept): nothing goes backwards
        want = {"echo": 60, "web": 20, "up": 60 * len(PAYLOAD), "down": 60 * len(PAYLOAD), "authz": 80}
        wait_until(lambda: {k: _totals(admin)[k] for k in want} == want and _totals(admin)["active"] == 0,
                   timeout=20, what=f"totals {want} (now {_totals(admin)})", proc=proc.popen)
        assert _totals(admin)["ready"] == 1
        assert not _log_lines(proc, "worker crashed")
    finally:
        code = proc.stop()
        if code == -signal.SIGKILL:      # the supervisor hung and was killed: end its workers too
            for pid in pids + [r["pid"] for r in _log_lines(proc, "worker restarted")]:
                _kill_if_alive(pid)
    assert code == 0                               # a restarted crash does not make the shutdown fail
    assert not Path(runtime_dir).exists()          # removed by the supervisor on exit
