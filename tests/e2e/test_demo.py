"""`secmesh demo` end to end, run as CI runs it: a process, non-interactive, JSON on stdout.

Every claim the demo prints is checked again here from independent evidence: the JSON result,
the human output, the final Prometheus text each process served (saved with `--keep`), the
processes' logs, and the PIDs the demo reports (all gone afterwards). A second run is
interrupted with SIGINT mid-way: exit 130, nothing left running, the temporary directory removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import proc as support
from tests.support.proc import secmesh_argv

pytestmark = pytest.mark.timeout(180)

TD = "spiffe://demo.local/ns/shop/sa"


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _step(demo: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in demo["doc"]["steps"] if s["key"] == key)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("demo")
    started = time.monotonic()
    r = subprocess.run(secmesh_argv("demo", "--json", "--non-interactive", "--keep", "--workdir", str(base)),
                       env=support.test_env(), capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    assert r.stdout.strip(), f"no JSON result; stderr:\n{r.stderr[-4000:]}"
    doc = json.loads(r.stdout)
    return {"rc": r.returncode, "doc": doc, "out": r.stderr, "elapsed": elapsed, "root": Path(doc["workdir"])}


def test_exits_zero_and_every_step_passed(demo: dict[str, Any]) -> None:
    doc = demo["doc"]
    assert demo["rc"] == 0 and doc["ok"] and doc["error"] is None, demo["out"][-4000:]
    assert [s["key"] for s in doc["steps"]] == ["allowed", "forbidden", "denied", "plaintext", "rotation"]
    assert all(s["ok"] for s in doc["steps"])
    assert "every step did what it claims" in demo["out"]
    print(f"demo wall time {demo['elapsed']:.1f}s (reported {doc['elapsed_seconds']}s)")
    assert demo["elapsed"] < 40


def test_allowed_request_reached_the_app_with_both_identities_verified(demo: dict[str, Any]) -> None:
    step = _step(demo, "allowed")
    assert step["status"] == 200 and step["echo"]["app"] == "orders" and step["echo"]["path"] == "/orders/42"
    assert step["peer_id"] == f"{TD}/frontend" and step["server_id"] == f"{TD}/orders"
    logs = demo["root"] / "logs"
    inbound = [ln for ln in _json_lines(logs / "orders-sidecar.log")
               if ln.get("logger") == "secmesh.sidecar.access" and ln.get("result") == "forwarded"]
    assert inbound and {ln["peer_id"] for ln in inbound} == {f"{TD}/frontend"}
    assert all(ln["tls_version"] == "TLSv1.3" for ln in inbound)
    assert '"path": "/orders/42"' in demo["out"]          # the app's echo is shown to the user


def test_the_app_saw_the_callers_spiffe_id_in_xfcc_and_the_access_log_agrees(demo: dict[str, Any]) -> None:
    step = _step(demo, "allowed")
    xfcc = step["echo"]["x-forwarded-client-cert"]
    assert xfcc == step["echo"]["headers"]["x-forwarded-client-cert"] and xfcc in demo["out"]   # shown as received
    fields = dict(part.split("=", 1) for part in xfcc.split(";"))
    assert fields["URI"] == f"{TD}/frontend" and fields["By"] == f"{TD}/orders" and len(fields["Hash"]) == 64
    assert step["xfcc_uri"] == f"{TD}/frontend" and step["logged_peer_id"] == f"{TD}/frontend"
    assert f"x-forwarded-client-cert: URI={TD}/frontend (the caller)" in demo["out"]
    # the app's own log of that request recorded the same header
    app = [ln for ln in _json_lines(demo["root"] / "logs" / "orders-app.log")
           if ln.get("msg") == "request" and ln.get("path") == "/orders/42"]
    assert app and app[0]["xfcc"] == xfcc
    access = [ln for ln in _json_lines(demo["root"] / "logs" / "orders-sidecar.log")
              if ln.get("msg") == "request" and ln.get("path") == "/orders/42" and ln.get("status") == 200]
    assert access and access[0]["peer_id"] == f"{TD}/frontend" and access[0]["decision"] == "allow"
    assert access[0]["policy"] == "ns[shop]-policy[orders-allow-frontend]-rule[0]"


def test_forbidden_path_got_403_naming_the_policy_and_never_reached_the_app(demo: dict[str, Any]) -> None:
    step = _step(demo, "forbidden")
    label = "ns[shop]-policy[orders-deny-admin]-rule[0]"
    assert step["status"] == 403 and step["denied_by"] == label and step["reached_app"] == 0
    assert step["body"].strip() == f"RBAC: access denied by {label}" and step["deny_delta"] == 1
    assert "orders.yaml:" in step["policy_source"]
    assert "403 Forbidden" in demo["out"] and f"x-secmesh-denied-by: {label}" in demo["out"]
    prom = (demo["root"] / "logs" / "orders-sidecar.prom").read_text()
    assert _metric(prom, "secmesh_sidecar_http_authz_decisions_total", listener="inbound-orders",
                   decision="deny", policy=label) == 1
    assert _metric(prom, "secmesh_sidecar_http_authz_decisions_total", decision="deny") == 1   # nothing else
    assert _metric(prom, "secmesh_sidecar_http_requests_total", listener="inbound-orders", status="4xx",
                   origin="local") == 1
    logs = demo["root"] / "logs"
    refused = [ln for ln in _json_lines(logs / "orders-sidecar.log")
               if ln.get("msg") == "request refused" and ln.get("path") == "/admin/orders"]
    assert len(refused) == 1 and refused[0]["policy"] == label and refused[0]["status"] == 403
    assert refused[0]["peer_id"] == f"{TD}/frontend" and "orders.yaml:" in refused[0]["policy_source"]
    assert not [ln for ln in _json_lines(logs / "orders-app.log") if str(ln.get("path", "")).startswith("/admin")]
    assert demo["doc"]["metrics"]["orders_http_authz_denied"] == 1


def test_denied_identity_moved_the_deny_counter_and_named_the_policy(demo: dict[str, Any]) -> None:
    step = _step(demo, "denied")
    assert step["handshake"] and step["server_id"] == f"{TD}/orders" and step["reached_app"] == 0
    prom = (demo["root"] / "logs" / "orders-sidecar.prom").read_text()
    assert _metric(prom, "secmesh_sidecar_authz_decisions_total", decision="deny") == 1
    refused = [ln for ln in _json_lines(demo["root"] / "logs" / "orders-sidecar.log")
               if ln.get("msg") == "connection refused" and ln.get("peer_id") == f"{TD}/intruder"]
    assert len(refused) == 1
    assert _metric(prom, "secmesh_sidecar_authz_decisions_total", decision="deny",
                   policy="ns[shop]-policy[orders-deny-intruder]-rule[0]") == 1
    assert refused[0]["policy_name"] == "orders-deny-intruder" and step["policy_named"]
    assert "orders.yaml:" in refused[0]["policy_source"]
    assert "arrives with L7" not in demo["out"]


def test_plaintext_to_the_strict_port_was_refused(demo: dict[str, Any]) -> None:
    step = _step(demo, "plaintext")
    assert step["reached_app"] == 0 and step["error"]
    prom = (demo["root"] / "logs" / "orders-sidecar.prom").read_text()
    assert _metric(prom, "secmesh_sidecar_connections_total", listener="inbound-orders",
                   result="refused_plaintext") == 1


def test_rotation_happened_under_load_with_zero_failures(demo: dict[str, Any]) -> None:
    step = _step(demo, "rotation")
    assert step["failed"] == 0 and step["keepalive_failed"] == 0 and step["requests"] > 10
    assert "0 failed" in demo["out"]
    logs = demo["root"] / "logs"
    for pod in ("frontend", "orders"):
        serials = step["serials"][pod]
        assert len(serials) >= 2 and len(set(serials)) == len(serials)
        assert all(s in demo["out"] for s in serials)             # the serials are printed
        agent = (logs / f"{pod}-agent.prom").read_text()
        assert _metric(agent, "secmesh_agent_rotations_total") >= 1
        sidecar = (logs / f"{pod}-sidecar.prom").read_text()
        assert _metric(sidecar, "secmesh_sidecar_cert_updates_total", result="applied") >= 2
        assert _metric(sidecar, "secmesh_sidecar_cert_updates_total", result="rejected") == 0
    ca = (logs / "ca.prom").read_text()
    assert _metric(ca, "secmesh_ca_certificates_issued_total") >= 4   # 2 pods × (issue + ≥1 rotation)
    assert _metric((logs / "frontend-sidecar.prom").read_text(), "secmesh_sidecar_connections_total",
                   result="upstream_failed") == 0


def test_every_process_was_stopped_and_the_logs_are_where_it_says(demo: dict[str, Any]) -> None:
    procs = demo["doc"]["metrics"]["processes"]
    assert {p["name"] for p in procs} == {"ca", "orders-app", "frontend-agent", "orders-agent", "frontend-sidecar",
                                         "orders-sidecar"}
    assert all(p["exit"] == 0 for p in procs), procs
    assert not [p for p in procs if _alive(p["pid"])]
    assert f"logs: {demo['root'] / 'logs'}" in demo["out"]
    assert (demo["root"] / "pods" / "frontend.token").stat().st_mode & 0o777 == 0o600


def test_sigint_mid_run_stops_everything_and_removes_the_directory(tmp_path: Path) -> None:
    proc = subprocess.Popen(secmesh_argv("demo", "--json", "--non-interactive", "--workdir", str(tmp_path)),
                            env=support.test_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        seen = ""
        assert proc.stderr is not None
        while "1. An allowed request" not in seen:       # the mesh is up: every process is running
            line = proc.stderr.readline()
            assert line, f"demo ended early:\n{seen}"
            seen += line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["error"] == "interrupted" and not doc["ok"]
    assert len(doc["metrics"]["processes"]) == 6
    assert not [p for p in doc["metrics"]["processes"] if _alive(p["pid"])]
    assert list(tmp_path.iterdir()) == []
    assert "interrupted before every step ran" in err


def _netns_usable() -> tuple[bool, str]:
    from secmesh.demo.netns import available

    ok, why = available()
    if not ok:
        return False, why
    name = f"smdprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return False, f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True, ""


def test_pods_in_their_own_network_namespaces(tmp_path: Path) -> None:
    usable, why = _netns_usable()
    if not usable:
        pytest.skip(f"network namespaces unavailable here: {why}")
    r = subprocess.run(secmesh_argv("demo", "--json", "--non-interactive", "--keep", "--netns", "--workdir",
                                    str(tmp_path)), env=support.test_env(), capture_output=True, text=True, timeout=150)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["ok"], r.stderr[-4000:]
    net = doc["network"]
    fe_ip, od_ip = net["addresses"]["frontend"], net["addresses"]["orders"]
    assert fe_ip != od_ip and not fe_ip.startswith("127.")
    root = Path(doc["workdir"])
    forwarded = [ln for ln in _json_lines(root / "logs" / "orders-sidecar.log")
                 if ln.get("logger") == "secmesh.sidecar.access" and ln.get("result") == "forwarded"]
    # the traffic left the frontend pod's address and arrived at the orders pod's: it crossed the veth pair
    assert forwarded and {ln["src"].rsplit(":", 1)[0] for ln in forwarded} == {fe_ip}
    outbound = [ln for ln in _json_lines(root / "logs" / "frontend-sidecar.log")
                if ln.get("logger") == "secmesh.sidecar.access" and ln.get("result") == "forwarded"]
    assert outbound and all(ln["upstream"].startswith(od_ip + ":") for ln in outbound)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in net["netns"].values())          # namespaces (and the veth) are gone
    assert not [p for p in doc["metrics"]["processes"] if _alive(p["pid"])]
