"""Router and clusters on a real sidecar: path / header routes, round robin over two apps, connect-failure
retries with outlier ejection, 5xx retries for idempotent requests, per-route timeouts, access log lines."""

from __future__ import annotations

import json

import pytest

from tests.integration.sidecar.harness import metric
from tests.integration.sidecar_l7.wire import curl, curl_status
from tests.support.proc import wait_until

pytestmark = pytest.mark.timeout(60)


def _app_of(mesh, path: str, *extra: str) -> str:
    r = curl("--http1.1", *extra, mesh.url("out-routed", path))
    return json.loads(r.stdout)["app"]


def test_prefix_route_round_robins_over_two_endpoints(mesh):
    apps = [_app_of(mesh, "/lb/x") for _ in range(6)]
    assert set(apps) == {"app1", "app2"}


def test_header_route(mesh):
    apps = {_app_of(mesh, "/v1/x", "-H", "x-canary: 1") for _ in range(4)}
    assert apps == {"app1", "app2"}
    r = curl("--http1.1", mesh.url("out-routed", "/v1/x"))     # no header: the mesh route (→ server sidecar → app1)
    body = json.loads(r.stdout)
    assert body["app"] == "app1" and "x-forwarded-client-cert" in body["headers"]


def test_dead_endpoint_is_retried_and_ejected(mesh):
    for _ in range(6):
        assert curl_status("--http1.1", mesh.url("out-routed", "/dead/x"))[0] in (200, 404)
    text = mesh.metrics("client")
    assert metric(text, "secmesh_sidecar_upstream_events_total", cluster="with-dead", event="connect_failed") >= 1
    assert metric(text, "secmesh_sidecar_upstream_events_total", cluster="with-dead", event="ejected") >= 1


def test_5xx_retried_for_idempotent_requests(mesh):
    status, body = curl_status("--http1.1", "-H", "x-canary: 1", mesh.url("out-routed", "/flaky/1"))
    assert status == 200 and body.startswith("flaky 2")         # 503 from each app once, then 200
    assert metric(mesh.metrics("client"), "secmesh_sidecar_upstream_events_total", cluster="two-apps",
                  event="retry") >= 2


def test_route_timeout(mesh):
    status, _ = curl_status("--http1.1", mesh.url("out-routed", "/sleep/2"))
    assert status == 504


def test_access_log_has_one_line_per_request(mesh):
    curl("--http1.1", "-H", "x-request-id: log-me-42", mesh.url("out-routed", "/lb/x"))

    def lines() -> list[dict]:
        return [json.loads(ln) for ln in mesh.log("client").splitlines()
                if '"msg":"request"' in ln and "log-me-42" in ln]

    wait_until(lambda: len(lines()) == 1, timeout=5, what="one access log line")
    lines = lines()
    rec = lines[0]
    for key in ("method", "authority", "path", "status", "duration_ms", "bytes_in", "bytes_out", "peer_id",
                "request_principal", "upstream", "decision", "policy", "route", "cluster"):
        assert key in rec
    assert rec["route"] == "lb" and rec["cluster"] == "two-apps" and rec["method"] == "GET"
