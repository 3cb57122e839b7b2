"""Port clashes (one error line, exit 1) and hot restart (sockets handed over, zero refused, old exits 0)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from tests.integration.sidecar.harness import admin_get, client_context, echo_roundtrip, tls_connect, wait_ready
from tests.support.proc import free_port, start_cli, wait_until

pytestmark = pytest.mark.timeout(90)


def _config(path: Path, pki, echo, *, admin: int, port: int, hot_restart: str = "") -> Path:
    path.write_text(
        f"workers: 1\n"
        f"drain_timeout: 5s\n"
        f'hot_restart_socket: "{hot_restart}"\n'
        f'admin: {{address: "127.0.0.1:{admin}"}}\n'
        f"certs: {{source: file, file: {{cert: {pki.server_cert}, key: {pki.server_key}, bundle: {pki.ca_pem}}}}}\n"
        f"listeners:\n"
        f'  - {{name: inbound, address: "127.0.0.1:{port}", upstream: "{echo.address}", allow_all: true}}\n')
    return path


@pytest.mark.parametrize("clash", ["admin", "listener"])
def test_a_second_sidecar_on_a_used_port_exits_1_with_one_line(tmp_path, pki, echo, clash):
    admin, port = free_port(), free_port()
    first = start_cli("sidecar", "--config", str(_config(tmp_path / "a.yaml", pki, echo, admin=admin, port=port)),
                      tmp_path=tmp_path, name="first")
    try:
        wait_ready(admin, first)
        second_cfg = _config(tmp_path / "b.yaml", pki, echo, admin=admin if clash == "admin" else free_port(),
                             port=port if clash == "listener" else free_port())
        from tests.support.proc import secmesh_argv, test_env

        r = subprocess.run(secmesh_argv("sidecar", "--config", str(second_cfg)), env=test_env(),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, (r.stdout, r.stderr)
        what, where = ("admin", admin) if clash == "admin" else ("listener inbound", port)
        assert r.stderr.strip() == (f"secmesh sidecar: cannot listen on 127.0.0.1:{where} ({what}): "
                                    "address already in use")
        assert "Traceback" not in r.stdout + r.stderr
        assert admin_get(admin, "/ready")[0] == 200          # the first one is untouched
    finally:
        first.stop()


def test_hot_restart_under_load_refuses_nothing(tmp_path, pki, echo):
    sockdir = Path(tempfile.mkdtemp(prefix="smh-", dir="/tmp"))
    hr = str(sockdir / "hot-restart")
    admin, port = free_port(), free_port()
    cfg = _config(tmp_path / "s.yaml", pki, echo, admin=admin, port=port, hot_restart=hr)
    ctx = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    old = start_cli("sidecar", "--config", str(cfg), tmp_path=tmp_path, name="old")
    procs = [old]
    ok, failures = [0], []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            msg = f"req-{i}".encode()
            try:
                with tls_connect(port, ctx) as s:
                    if echo_roundtrip(s, msg) != msg:
                        failures.append(f"{i}: short echo")
                    else:
                        ok[0] += 1
            except OSError as exc:
                failures.append(f"{i}: {exc!r}")

    client = threading.Thread(target=load, daemon=True)
    try:
        wait_ready(admin, old)
        wait_until(lambda: Path(hr).exists(), timeout=10, what="hot restart socket", proc=old.popen)
        long_lived = tls_connect(port, ctx)                   # opened on the old process, must survive the swap
        assert echo_roundtrip(long_lived, b"before") == b"before"
        client.start()
        wait_until(lambda: ok[0] >= 20, timeout=20, what="load through the old process")
        new = start_cli("sidecar", "--config", str(cfg), tmp_path=tmp_path, name="new")
        procs.append(new)
        wait_until(lambda: '"msg":"hot restart: took the listening sockets"' in new.output(), timeout=20,
                   what="socket hand-over", proc=new.popen)
        assert echo_roundtrip(long_lived, b"during") == b"during"
        long_lived.close()
        old.popen.wait(timeout=20)
        assert old.popen.returncode == 0, old.output()[-2000:]
        before = ok[0]
        wait_until(lambda: ok[0] >= before + 20, timeout=20, what="load through the new process", proc=new.popen)
        stop.set()
        client.join(10)
        assert not failures, failures[:5]
        assert admin_get(admin, "/ready")[0] == 200
        assert '"msg":"hot restart: sockets handed over"' in old.output()
        assert Path(hr).exists()                              # the new process serves the next restart
    finally:
        stop.set()
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
