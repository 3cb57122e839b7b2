"""SIGTERM on an HTTP listener: h2 clients get GOAWAY and their open stream finishes; new connections are
refused; idle HTTP/1.1 keep-alive connections are closed instead of waiting out the drain timeout."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time

import pytest

from tests.integration.sidecar.harness import start_sidecar
from tests.integration.sidecar.pki import TestCA, sa
from tests.integration.sidecar_l7.apps import HttpApp
from tests.integration.sidecar_l7.wire import Raw, get
from tests.support.proc import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def test_drain_sends_goaway_and_finishes_open_streams(tmp_path):
    app = HttpApp("app")
    ca = TestCA("cluster.local")
    cert, key = ca.issue(sa("default", "client")).write(tmp_path, "client")
    port = free_port()
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""\
        workers: 1
        drain_timeout: 5s
        certs: {{source: file, file: {{cert: {cert}, key: {key}, bundle: {ca.write(tmp_path)}}}}}
        clusters: [{{name: app, endpoints: ["{app.address}"], protocol: http1}}]
        listeners:
          - {{name: out, kind: outbound, address: "127.0.0.1:{port}", upstream: "{app.address}",
              peer_ids: ["spiffe://cluster.local/ns/default/sa/x"], protocol: http,
              http: {{routes: [{{path_prefix: /, cluster: app}}]}}}}
        """))
    proc, _ = start_sidecar(tmp_path, "drain", "--config", str(tmp_path / "c.yaml"))
    ng: subprocess.Popen[str] | None = None
    try:
        idle = Raw(port)
        idle.send(get())
        assert idle.response()[0] == 200
        ng = subprocess.Popen(["nghttp", "-v", f"http://127.0.0.1:{port}/sleep/1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: len(app.requests) >= 2, timeout=5, what="the h2 request at the app")
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM)
        out, _ = ng.communicate(timeout=10)
        assert "recv GOAWAY frame" in out and "NO_ERROR" in out          # told to go away …
        assert ":status: 200" in out and "slept" in out                   # … but the open stream finished
        assert idle.closed()                                  # the idle keep-alive connection was closed
        assert proc.popen.wait(10) == 0
        assert time.monotonic() - t0 < 4                      # done when the work was done, not at 5 s
        idle.close()
    finally:
        if ng is not None and ng.poll() is None:
            ng.kill()
            ng.wait()
        proc.stop()
        app.close()
