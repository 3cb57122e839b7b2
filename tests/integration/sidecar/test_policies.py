"""`secmesh sidecar` with Istio policy files: L4 authorization by the engine, PeerAuthentication per port,
reload on SIGHUP (a broken or CUSTOM set is refused and the old one kept), refusal to start on bad sets."""

from __future__ import annotations

import json
import signal
import socket
import textwrap

import pytest

from tests.integration.sidecar.harness import (admin_get, client_context, echo_roundtrip, first_read, metric,
                                               start_sidecar, tls_connect)
from tests.integration.sidecar.pki import sa
from tests.support.proc import free_port, run_cli, wait_until

pytestmark = pytest.mark.timeout(90)

PEER_AUTH = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  portLevelMtls:
    9003: {mode: PERMISSIVE}
"""

AUTHZ = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {ports: ["9001", "9003"]}}]
  - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]
    to: [{operation: {ports: ["9003"]}}]
  - to: [{operation: {ports: ["9002"], methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/evil"]}}]
"""

DENY_CLIENT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
"""

CUSTOM = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"""


def _config(tmp_path, pki, echo, policies, *, poll="1h", extra_listener=""):
    ports = {"tcp": free_port(), "http": free_port(), "perm": free_port()}
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(f"""
        workers: 1
        policies: {policies}
        policy_poll_interval: {poll}
        workload: {{namespace: default, labels: {{app: server}}}}
        certs:
          source: file
          file: {{cert: {pki.server_cert}, key: {pki.server_key}, bundle: {pki.ca_pem}}}
        listeners:
          - {{name: in-tcp, address: "127.0.0.1:{ports['tcp']}", upstream: "{echo.address}", workload_port: 9001}}
          - {{name: in-http, address: "127.0.0.1:{ports['http']}", upstream: "{echo.address}", workload_port: 9002,
              protocol: http}}
          - {{name: in-perm, address: "127.0.0.1:{ports['perm']}", upstream: "{echo.address}", workload_port: 9003}}
        """) + extra_listener)
    return path, ports


def _refused(port, ctx) -> bool:
    with tls_connect(port, ctx) as s:
        s.sendall(b"hello")
        return first_read(s) in (b"", None)


def _plaintext(port: int, payload: bytes) -> bytes | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        try:
            return s.recv(100)
        except ConnectionResetError:
            return None


@pytest.fixture
def identities(pki):
    out = {}
    for name in ("evil", "other"):
        cert, key = pki.ca.issue(sa("default", name)).write(pki.dir, name)
        out[name] = client_context(pki.ca_pem, cert, key)
    out["client"] = client_context(pki.ca_pem, pki.client_cert, pki.client_key)
    return out


def _log_lines(proc) -> list[dict]:
    out = []
    for line in proc.output().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_engine_decides_before_a_byte_is_read_and_peer_authentication_sets_modes(tmp_path, pki, echo, identities):
    pdir = tmp_path / "policies"
    pdir.mkdir()
    (pdir / "peer.yaml").write_text(PEER_AUTH)
    (pdir / "authz.yaml").write_text(AUTHZ)
    path, ports = _config(tmp_path, pki, echo, pdir)
    proc, admin = start_sidecar(tmp_path, "sidecar", "--config", str(path))
    with proc:
        # ALLOW by principal + port
        with tls_connect(ports["tcp"], identities["client"]) as s:
            assert echo_roundtrip(s, b"allowed") == b"allowed"
        before = echo.connections
        # DENY policy (mesh-wide, root namespace): refused before a byte reaches the app
        assert _refused(ports["tcp"], identities["evil"])
        # ALLOW policies apply and none matches
        assert _refused(ports["tcp"], identities["other"])
        # http port: the only matching rule needs the method → NEEDS_REQUEST → admitted, decided per request
        # by the L7 layer: a POST is answered 403 by the sidecar itself, nothing reaches the app
        with tls_connect(ports["http"], identities["client"]) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 403")
        # STRICT (mesh-wide PeerAuthentication): plaintext refused before authorization
        assert _plaintext(ports["tcp"], b"plain") in (b"", None)
        assert echo.connections == before
        # PERMISSIVE on workload port 9003 (portLevelMtls): plaintext from 127.0.0.1 is allowed by ipBlocks,
        # mTLS from the client too
        assert _plaintext(ports["perm"], b"plain-ok") == b"plain-ok"
        with tls_connect(ports["perm"], identities["client"]) as s:
            assert echo_roundtrip(s, b"tls-ok") == b"tls-ok"

        _, text = admin_get(admin, "/metrics")
        name = "secmesh_sidecar_authz_decisions_total"
        assert metric(text, name, listener="in-tcp", decision="allow", reason="allow_policy",
                      policy="ns[default]-policy[allow-client]-rule[0]") == 1
        assert metric(text, name, listener="in-tcp", decision="deny", reason="deny_policy",
                      policy="ns[istio-system]-policy[deny-evil]-rule[0]") == 1
        assert metric(text, name, listener="in-tcp", decision="deny", reason="no_allow_match") == 1
        assert metric(text, name, listener="in-http", decision="allow", reason="needs_request") == 1
        assert metric(text, "secmesh_sidecar_http_authz_decisions_total", listener="in-http", decision="deny",
                      reason="no_allow_match") == 1
        assert metric(text, "secmesh_sidecar_connections_total", listener="in-tcp", result="refused_plaintext") >= 1
        status, body = admin_get(admin, "/policies")
        doc = json.loads(body)
        assert status == 200 and doc["version"] == 1 and doc["authorization_policies"] == 2
        assert doc["listeners"]["in-tcp"]["mtls_mode"] == "STRICT"
        assert doc["listeners"]["in-perm"] == {"workload_port": 9003, "protocol": "tcp", "mtls_mode": "PERMISSIVE",
                                               "peer_authentication": "ns[default]-peerauthentication[server]"}

        lines = _log_lines(proc)
        deny = [ln for ln in lines if ln.get("policy_name") == "deny-evil"]
        assert deny and deny[0]["policy_namespace"] == "istio-system" and deny[0]["policy_rule"] == 0
        assert deny[0]["policy_source"].startswith(str(pdir / "authz.yaml") + ":")
        assert any(ln.get("msg") == "request refused" and ln.get("listener") == "in-http" for ln in lines)

        # reload on SIGHUP: a DENY for the client takes effect; a broken set and a CUSTOM set are refused
        (pdir / "deny.yaml").write_text(DENY_CLIENT)
        proc.signal(signal.SIGHUP)
        wait_until(lambda: json.loads(admin_get(admin, "/policies")[1])["version"] == 2, timeout=15,
                   what="policy version 2", proc=proc.popen)
        assert _refused(ports["tcp"], identities["client"])
        (pdir / "broken.yaml").write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                          "metadata: {name: b, namespace: default}\nspec:\n  actoin: DENY\n")
        proc.signal(signal.SIGHUP)
        wait_until(lambda: json.loads(admin_get(admin, "/policies")[1])["last_error"], timeout=15,
                   what="reload refused", proc=proc.popen)
        doc = json.loads(admin_get(admin, "/policies")[1])
        assert doc["version"] == 2 and f"{pdir / 'broken.yaml'}:5:" in doc["last_error"]
        assert _refused(ports["tcp"], identities["client"])     # the old (version 2) set is still enforced
        (pdir / "broken.yaml").write_text(CUSTOM)
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "CUSTOM" in (json.loads(admin_get(admin, "/policies")[1])["last_error"] or ""),
                   timeout=15, what="CUSTOM refused", proc=proc.popen)
        (pdir / "broken.yaml").unlink()
        (pdir / "deny.yaml").unlink()
        proc.signal(signal.SIGHUP)
        wait_until(lambda: json.loads(admin_get(admin, "/policies")[1])["version"] == 3, timeout=15,
                   what="policy version 3", proc=proc.popen)
        with tls_connect(ports["tcp"], identities["client"]) as s:
            assert echo_roundtrip(s, b"allowed-again") == b"allowed-again"
        _, text = admin_get(admin, "/metrics")
        assert metric(text, "secmesh_sidecar_policy_reloads_total", result="rejected") == 2
        assert metric(text, "secmesh_sidecar_policy_reloads_total", result="applied") == 2
        log_text = proc.output()
        assert "policy reload refused; keeping the previous policy set" in log_text


def test_file_change_is_picked_up_by_polling_and_peer_authentication_changes_the_mode(tmp_path, pki, echo,
                                                                                     identities):
    pfile = tmp_path / "policies.yaml"
    pfile.write_text(PEER_AUTH + "---\n" + AUTHZ)
    path, ports = _config(tmp_path, pki, echo, pfile, poll="100ms")
    proc, admin = start_sidecar(tmp_path, "sidecar", "--config", str(path))
    with proc:
        assert _plaintext(ports["perm"], b"plain-1") == b"plain-1"
        # port 9003 becomes STRICT: plaintext is refused from then on, mTLS still works
        pfile.write_text(PEER_AUTH.replace("PERMISSIVE", "STRICT") + "---\n" + AUTHZ)
        wait_until(lambda: json.loads(admin_get(admin, "/policies")[1])["listeners"]["in-perm"]["mtls_mode"]
                   == "STRICT", timeout=15, what="mode STRICT", proc=proc.popen)
        assert _plaintext(ports["perm"], b"plain-2") in (b"", None)
        with tls_connect(ports["perm"], identities["client"]) as s:
            assert echo_roundtrip(s, b"tls") == b"tls"


@pytest.mark.parametrize("content, expect", [
    (CUSTOM, "CUSTOM"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: [{form: []}]\n",
     ":5:"),
])
def test_refuses_to_start_on_unsupported_or_broken_policies(tmp_path, pki, echo, content, expect):
    pfile = tmp_path / "policies.yaml"
    pfile.write_text(content)
    path, _ = _config(tmp_path, pki, echo, pfile)
    r = run_cli("sidecar", "--config", str(path))
    assert r.returncode == 2 and expect in r.stderr and "refusing to start" in r.stderr, r.stderr


def test_allow_list_and_policies_cannot_be_mixed(tmp_path, pki, echo):
    pfile = tmp_path / "policies.yaml"
    pfile.write_text(AUTHZ)
    extra = f"""  - {{name: mixed, address: "127.0.0.1:{free_port()}", upstream: "{echo.address}",
      allow_principals: ["{pki.client_id}"]}}\n"""
    path, _ = _config(tmp_path, pki, echo, pfile, extra_listener=extra)
    r = run_cli("sidecar", "--config", str(path))
    assert r.returncode == 2 and "cannot be combined with `policies`" in r.stderr, r.stderr
