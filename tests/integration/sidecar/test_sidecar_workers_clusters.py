"""`--workers 2` with an L7 listener: `/clusters` shows every worker's own pools, not worker 0's alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.sidecar.harness import admin_get, wait_ready
from tests.support.proc import free_port, start_cli, wait_until

pytestmark = pytest.mark.timeout(90)


def _config(path: Path, pki, backend, *, admin: int, port: int) -> Path:  # type: ignore[no-untyped-def]
    path.write_text(
        "workers: 2\n"
        "drain_timeout: 2s\n"
        f'admin: {{address: "127.0.0.1:{admin}"}}\n'
        f"certs: {{source: file, file: {{cert: {pki.server_cert}, key: {pki.server_key}, bundle: {pki.ca_pem}}}}}\n"
        "listeners:\n"
        f'  - {{name: web, address: "127.0.0.1:{port}", upstream: "{backend.address}", allow_all: true,'
        " protocol: http, http: {upstream_protocol: http1}}\n")
    return path


def _clusters(admin: int) -> dict:
    status, body = admin_get(admin, "/clusters")
    assert status == 200, body
    return json.loads(body)


def test_clusters_lists_each_workers_pools(tmp_path, pki, http_backend):  # type: ignore[no-untyped-def]
    admin, port = free_port(), free_port()
    proc = start_cli("sidecar", "--config", str(_config(tmp_path / "s.yaml", pki, http_backend, admin=admin,
                                                         port=port)), tmp_path=tmp_path, name="sidecar")
    try:
        wait_ready(admin, proc)
        url = f"https://127.0.0.1:{port}/ok"
        r = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca_pem), "--cert", str(pki.client_cert),
                            "--key", str(pki.client_key), "-H", "Connection: close", "-w", "%{http_code}\n",
                            *(["-o", "/dev/null", url] * 20)], capture_output=True, text=True, timeout=60)
        assert r.stdout.split() == ["200"] * 20, r.stderr
        # the other worker's view is the one it last published (at most a second old): wait until
        # both views exist and neither still shows a request of the burst in flight
        def settled() -> bool:
            views = _clusters(admin).get("workers", {})
            return sorted(views) == ["0", "1"] and all(
                c["requests_in_flight"] == 0 for v in views.values() for c in v.values())
        wait_until(settled, timeout=10, what="both workers' settled views", proc=proc.popen)
        for view in _clusters(admin)["workers"].values():
            (cluster,) = view.values()            # the listener's implicit cluster, in every worker
            assert [e["address"] for e in cluster["endpoints"]] == [http_backend.address]
            assert cluster["requests_in_flight"] == 0 and not cluster["endpoints"][0]["ejected"]
    finally:
        proc.stop()
