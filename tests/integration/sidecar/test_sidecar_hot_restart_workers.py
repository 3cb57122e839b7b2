"""Hot restart with `workers: 2`: the supervisors swap every worker's socket; zero refused under load.

Also from a single-worker sidecar to a two-worker one (its socket becomes worker 0's; worker 1 binds a
new SO_REUSEPORT socket on the same port).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from tests.integration.sidecar.harness import (admin_get, client_context, echo_roundtrip, metric, tls_connect,
                                               wait_ready)
from tests.support.proc import free_port, start_cli, wait_until

pytestmark = pytest.mark.timeout(120)


def _config(path: Path, pki, echo, *, admin: int, port: int, hot_restart: str, workers: int) -> Path:
    path.write_text(
        f"workers: {workers}\n"
        f"drain_timeout: 5s\n"
        f'hot_restart_socket: "{hot_restart}"\n'
        f'admin: {{address: "127.0.0.1:{admin}"}}\n'
        f"certs: {{source: file, file: {{cert: {pki.server_cert}, key: {pki.server_key}, bundle: {pki.ca_pem}}}}}\n"
        f"listeners:\n"
        f'  - {{name: inbound, address: "127.0.0.1:{port}", upstream: "{echo.address}", allow_all: true}}\n')
    return path


def _msg(proc, msg: str) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in proc.output().splitlines() if f'"msg":"{msg}"' in line]


@pytest.mark.parametrize("old_workers", [2, 1])
def test_hot_restart_with_two_workers_under_load_refuses_nothing(tmp_path, pki, echo, old_workers):
    sockdir = Path(tempfile.mkdtemp(prefix="smh-", dir="/tmp"))
    hr = str(sockdir / "hot-restart")
    admin, port = free_port(), free_port()
    old_cfg = _config(tmp_path / "old.yaml", pki, echo, admin=admin, port=port, hot_restart=hr, workers=old_workers)
    cfg = _config(tmp_path / "new.yaml", pki, echo, admin=admin, port=port, hot_restart=hr, workers=2)
    ctx = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    old = start_cli("sidecar", "--config", str(old_cfg), tmp_path=tmp_path, name="old")
    procs = [old]
    ok, failures = [0], []
    stop = threading.Event()
    lock = threading.Lock()

    def load(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            msg = f"req-{k}-{i}".encode()
            try:
                with tls_connect(port, ctx) as s:
                    if echo_roundtrip(s, msg) != msg:
                        failures.append(f"{k}/{i}: short echo")
                    else:
                        with lock:
                            ok[0] += 1
            except OSError as exc:
                failures.append(f"{k}/{i}: {exc!r}")

    clients = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(3)]
    try:
        wait_ready(admin, old)
        wait_until(lambda: Path(hr).exists(), timeout=10, what="hot restart socket", proc=old.popen)
        long_lived = [tls_connect(port, ctx) for _ in range(6)]      # on the old workers; must survive the swap
        for s in long_lived:
            assert echo_roundtrip(s, b"before") == b"before"
        for t in clients:
            t.start()
        wait_until(lambda: ok[0] >= 30, timeout=20, what="load through the old process")
        new = start_cli("sidecar", "--config", str(cfg), tmp_path=tmp_path, name="new")
        procs.append(new)
        wait_until(lambda: _msg(new, "hot restart: took the listening sockets"), timeout=20,
                   what="socket hand-over", proc=new.popen)
        assert sorted(_msg(new, "hot restart: took the listening sockets")[0]["sockets"]) == \
            (["admin", "inbound/0", "inbound/1"] if old_workers == 2 else ["admin", "inbound"])
        for s in long_lived:
            assert echo_roundtrip(s, b"during") == b"during"
        # The old workers drain (the long-lived connections hold them) and have left the shared
        # admin socket to the successor: a readiness probe never meets a draining 503.
        wait_until(lambda: len(_msg(old, "draining")) == old_workers, timeout=20, what="old workers draining",
                   proc=old.popen)
        assert [admin_get(admin, "/ready")[0] for _ in range(20)] == [200] * 20
        for s in long_lived:
            s.close()
        old.popen.wait(timeout=30)
        assert old.popen.returncode == 0, old.output()[-3000:]
        assert sorted(r["worker"] for r in _msg(old, "stopped")) == list(range(old_workers))
        before = ok[0]
        wait_until(lambda: ok[0] >= before + 30, timeout=20, what="load through the new process", proc=new.popen)
        stop.set()
        for t in clients:
            t.join(10)
        assert not failures, failures[:5]
        assert admin_get(admin, "/ready")[0] == 200
        # the new sidecar's own totals: both of its workers took connections from the shared sockets
        text = admin_get(admin, "/metrics")[1]
        assert metric(text, "secmesh_sidecar_connections_total", listener="inbound", result="accepted") > 0
        assert Path(hr).exists()                              # the new supervisor serves the next restart
        assert new.popen.poll() is None
    finally:
        stop.set()
        for p in reversed(procs):
            if p.stop() == -signal.SIGKILL:      # a hung supervisor was killed: end its workers too
                for started in _msg(p, "workers started"):
                    for pid in started["pids"]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(sockdir, ignore_errors=True)
