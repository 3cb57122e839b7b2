"""End to end with the real node agent: `secmesh ca serve` + two `secmesh agent`s + two sidecars fed by SDS.

    client ──plain──▶ outbound sidecar ══mTLS══▶ inbound sidecar ──plain──▶ echo backend
                      (SDS: agent "client")      (SDS: agent "server", Istio policies)

Leaves live 6 s, so both agents rotate every ~3 s while a connection stays open through the
whole path and new connections keep being made: zero failures, and the inbound sidecar
serves new certificates to new handshakes. A second, direct client (a cert from
`secmesh ca issue`) goes through inbound mTLS on its own to observe the served serials.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import ssl
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.sidecar.harness import echo_roundtrip, first_read, start_sidecar, tls_connect
from tests.support.proc import Process, free_port, run_cli, start_cli, tcp_ready, unix_ready, wait_until
from tests.support.tokens import TokenIssuer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(importlib.util.find_spec("secmesh.cli.agent") is None,
                       reason="`secmesh agent` (secmesh.cli.agent) is not available yet"),
]

SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
POLICIES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: default}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
"""


@pytest.fixture
def sockdir():
    d = Path(tempfile.mkdtemp(prefix="sme-", dir="/tmp"))   # AF_UNIX paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _ok(r) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def _agent(tmp_path: Path, name: str, sock: Path, ca_port: int, roots: Path, jwks: Path, token: Path) -> Process:
    proc = start_cli("agent", "--socket", str(sock), "--ca-address", f"127.0.0.1:{ca_port}", "--ca-root", str(roots),
                     "--jwks", str(jwks), "--token-file", str(token), "--ttl", "6s", "--backoff-initial", "200ms",
                     "--backoff-max", "1s", "--admin", f"127.0.0.1:{free_port()}", tmp_path=tmp_path, name=name)
    wait_until(unix_ready(sock), timeout=30, what=f"{name} socket", proc=proc.popen)
    return proc


def _sidecar_config(path: Path, sock: Path, listener: str, **extra: str) -> Path:
    lines = "".join(f"\n{k}: {v}" for k, v in extra.items())
    path.write_text(textwrap.dedent(f"""\
        workers: 1
        certs: {{source: sds, sds: {{socket: {sock}, backoff_initial: 100ms, backoff_max: 500ms}}}}""")
                    + lines + "\nlisteners:\n" + listener)
    return path


def _serial(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def test_sidecars_fed_by_the_real_agent_survive_rotation(tmp_path, sockdir, echo):
    ca_dir = tmp_path / "ca"
    _ok(run_cli("ca", "init", "--trust-domain", "cluster.local", "--dir", str(ca_dir)))
    roots = tmp_path / "roots.pem"
    roots.write_text(_ok(run_cli("ca", "bundle", "--dir", str(ca_dir))))
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    tokens = {}
    for sa in ("server", "client"):
        tokens[sa] = tmp_path / f"{sa}-token"
        tokens[sa].write_text(issuer.token("default", sa))
    direct = tmp_path / "direct"
    _ok(run_cli("ca", "issue", CLIENT_ID, "--dir", str(ca_dir), "--ttl", "1h", "--out", str(direct)))
    direct_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    direct_ctx.check_hostname = False
    direct_ctx.load_verify_locations(cafile=str(roots))
    direct_ctx.load_cert_chain(str(direct / "cert-chain.pem"), str(direct / "key.pem"))
    stranger = tmp_path / "stranger"
    _ok(run_cli("ca", "issue", "spiffe://cluster.local/ns/default/sa/stranger", "--dir", str(ca_dir),
                "--out", str(stranger)))
    stranger_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger_ctx.check_hostname = False
    stranger_ctx.load_verify_locations(cafile=str(roots))
    stranger_ctx.load_cert_chain(str(stranger / "cert-chain.pem"), str(stranger / "key.pem"))

    ca_port, in_port, out_port = free_port(), free_port(), free_port()
    ca = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{ca_port}", "--jwks", str(jwks),
                   tmp_path=tmp_path, name="ca")
    procs: list[Process] = [ca]
    try:
        wait_until(tcp_ready("127.0.0.1", ca_port), timeout=30, what="CA port", proc=ca.popen)
        procs.append(_agent(tmp_path, "agent-server", sockdir / "server", ca_port, roots, jwks, tokens["server"]))
        procs.append(_agent(tmp_path, "agent-client", sockdir / "client", ca_port, roots, jwks, tokens["client"]))
        policies = tmp_path / "policies.yaml"
        policies.write_text(POLICIES)
        inbound_cfg = _sidecar_config(
            tmp_path / "inbound.yaml", sockdir / "server",
            f'  - {{name: inbound, address: "127.0.0.1:{in_port}", upstream: "{echo.address}"}}\n',
            policies=str(policies))
        outbound_cfg = _sidecar_config(
            tmp_path / "outbound.yaml", sockdir / "client",
            f'  - {{name: outbound, kind: outbound, address: "127.0.0.1:{out_port}", '
            f'upstream: "127.0.0.1:{in_port}", peer_ids: ["{SERVER_ID}"]}}\n')
        inbound, _ = start_sidecar(tmp_path, "inbound", "--config", str(inbound_cfg))
        procs.append(inbound)
        outbound, _ = start_sidecar(tmp_path, "outbound", "--config", str(outbound_cfg))
        procs.append(outbound)

        # a peer the policies do not admit is refused before a byte reaches the app
        before = echo.connections
        with tls_connect(in_port, stranger_ctx) as s:
            s.sendall(b"hello")
            assert first_read(s) in (b"", None)
        assert echo.connections == before

        long_lived = socket.create_connection(("127.0.0.1", out_port), timeout=5)
        direct_long = tls_connect(in_port, direct_ctx)
        serials: set[int] = set()
        failures: list[str] = []
        rounds = 0
        deadline = time.monotonic() + 9.0           # three rotation periods of the 6 s leaves
        try:
            while time.monotonic() < deadline:
                rounds += 1
                msg = f"round-{rounds}".encode()
                for what, sock in (("long-lived via outbound", long_lived), ("long-lived direct", direct_long)):
                    if echo_roundtrip(sock, msg) != msg:
                        failures.append(f"{what}: round {rounds}")
                try:
                    with socket.create_connection(("127.0.0.1", out_port), timeout=5) as s:
                        if echo_roundtrip(s, msg) != msg:
                            failures.append(f"new via outbound: round {rounds}")
                    with tls_connect(in_port, direct_ctx) as s:
                        serials.add(_serial(s))
                        if echo_roundtrip(s, msg) != msg:
                            failures.append(f"new direct: round {rounds}")
                except OSError as exc:
                    failures.append(f"round {rounds}: {exc!r}")
                time.sleep(0.1)
        finally:
            long_lived.close()
            direct_long.close()
        assert not failures, failures
        assert rounds > 20
        assert len(serials) >= 2, f"the inbound sidecar never served a rotated certificate: {serials}"
        log = inbound.output()
        assert log.count('"msg":"certificate applied"') >= 3 and '"source":"sds"' in log
        assert outbound.output().count('"msg":"certificate applied"') >= 3
    finally:
        for p in reversed(procs):
            p.stop()
