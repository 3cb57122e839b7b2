"""One node agent, no token of its own, serving two sidecars: each is attested by the token it sends.

    secmesh ca serve ◀── secmesh agent --token-file ""  ◀── SDS + `authorization: Bearer` ── sidecar A (sa/alpha)
                                                        ◀── SDS + `authorization: Bearer` ── sidecar B (sa/beta)

This is the Kubernetes layout (one agent per node, every pod on the node sharing its socket):
the agent cannot tell its callers apart over the UDS (no peer credentials), so each sidecar's
`certs.sds.token_file` decides which SPIFFE ID it is issued.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.sidecar.harness import admin_get, start_sidecar
from tests.support.proc import Process, free_port, run_cli, start_cli, tcp_ready, unix_ready, wait_until
from tests.support.tokens import TokenIssuer

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(importlib.util.find_spec("secmesh.cli.agent") is None,
                       reason="`secmesh agent` (secmesh.cli.agent) is not available yet"),
]


@pytest.fixture
def sockdir():
    d = Path(tempfile.mkdtemp(prefix="smt-", dir="/tmp"))   # AF_UNIX paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _ok(r) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_one_agent_serves_two_sidecars_each_with_its_own_identity(tmp_path, sockdir, echo):
    ca_dir = tmp_path / "ca"
    _ok(run_cli("ca", "init", "--trust-domain", "cluster.local", "--dir", str(ca_dir)))
    roots = tmp_path / "roots.pem"
    roots.write_text(_ok(run_cli("ca", "bundle", "--dir", str(ca_dir))))
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    sock = sockdir / "agent"
    ca_port = free_port()
    procs: list[Process] = []
    try:
        ca = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{ca_port}", "--jwks", str(jwks),
                       tmp_path=tmp_path, name="ca")
        procs.append(ca)
        wait_until(tcp_ready("127.0.0.1", ca_port), timeout=30, what="CA port", proc=ca.popen)
        agent = start_cli("agent", "--socket", str(sock), "--ca-address", f"127.0.0.1:{ca_port}", "--ca-root",
                          str(roots), "--jwks", str(jwks), "--token-file", "", "--ttl", "1h",
                          "--backoff-initial", "200ms", "--backoff-max", "1s", "--admin", f"127.0.0.1:{free_port()}",
                          tmp_path=tmp_path, name="agent")
        procs.append(agent)
        wait_until(unix_ready(sock), timeout=30, what="agent socket", proc=agent.popen)

        admins = {}
        tokens = {}
        for sa in ("alpha", "beta"):
            token = issuer.token("default", sa)
            tokens[sa] = token
            (tmp_path / f"{sa}-token").write_text(token)
            cfg = tmp_path / f"{sa}.yaml"
            cfg.write_text(
                f"workers: 1\n"
                f"certs: {{source: sds, sds: {{socket: {sock}, backoff_initial: 100ms, backoff_max: 500ms, "
                f"token_file: {tmp_path / f'{sa}-token'}}}}}\n"
                f"listeners:\n"
                f'  - {{name: inbound, address: "127.0.0.1:{free_port()}", upstream: "{echo.address}", '
                f"allow_all: true}}\n")
            proc, admins[sa] = start_sidecar(tmp_path, sa, "--config", str(cfg))
            procs.append(proc)

        for sa, port in admins.items():
            status, body = admin_get(port, "/certs")
            assert status == 200, body
            assert json.loads(body)["spiffe_id"] == f"spiffe://cluster.local/ns/default/sa/{sa}"
        for p in procs[2:]:                                # the token never reaches a log line
            out = p.output()
            assert '"source":"sds"' in out
            assert all(t not in out for t in tokens.values())
        assert all(t not in agent.output() for t in tokens.values())
    finally:
        for p in reversed(procs):
            p.stop()
