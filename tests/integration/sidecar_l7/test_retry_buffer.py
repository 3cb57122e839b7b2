"""The retry buffer (`retry_buffer_limit`, Envoy's per_request_buffer_limit_bytes) through a real sidecar.

A request body within the limit is kept and replayed: the app sees the identical body twice
(503 first, then 200). A larger body streams on without a copy: it reaches the app once, the
503 goes back to the client, and `secmesh_sidecar_upstream_events_total{event="unbuffered"}` counts it.
Retries on a 5xx are for idempotent methods, so the bodies here travel in PUTs; a POST is sent
once whatever its size (checked too).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from secmesh.errors import ConfigError
from tests.integration.sidecar.harness import admin_get, metric
from tests.integration.sidecar_l7.upstreams import RecordingApp, one_sidecar

LIMIT = 1024


class Env:
    def __init__(self, app: RecordingApp, port: int, admin: int) -> None:
        self.app, self.port, self.admin = app, port, admin

    def send(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                     headers={"Host": "svc"})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def unbuffered(self) -> float:
        return metric(admin_get(self.admin, "/metrics")[1], "secmesh_sidecar_upstream_events_total",
                      cluster="app", event="unbuffered")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    app = RecordingApp()
    proc = None
    try:
        proc, port, admin = one_sidecar(
            tmp_path_factory.mktemp("retry-buffer"),
            f"""\
            - {{name: app, endpoints: ["{app.address}"], protocol: http1, retries: 2,
                retry_buffer_limit: {LIMIT}, outlier_consecutive_failures: 0}}
            """,
            """\
            - {name: nobuf, path_prefix: /once503/nobuf/, cluster: app, retry_buffer_limit: 0}
            - {name: app, path_prefix: /, cluster: app}
            """)
        yield Env(app, port, admin)
    finally:
        if proc is not None:
            proc.stop()
        app.close()


def test_body_within_the_limit_is_replayed_identically(env: Env) -> None:
    body = os.urandom(LIMIT - 24)
    status, out = env.send("PUT", "/once503/small", body)
    assert status == 200, out
    assert env.app.bodies("/once503/small") == [("PUT", body), ("PUT", body)]


def test_body_exactly_at_the_limit_is_still_replayed(env: Env) -> None:
    body = os.urandom(LIMIT)
    status, _ = env.send("PUT", "/once503/exact", body)
    assert status == 200
    assert env.app.bodies("/once503/exact") == [("PUT", body), ("PUT", body)]


def test_body_over_the_limit_streams_once_and_is_not_retried(env: Env) -> None:
    before = env.unbuffered()
    body = os.urandom(256 * 1024)               # many reads, far over the limit: streamed, never copied
    status, _ = env.send("PUT", "/once503/big", body)
    assert status == 503                         # the app's answer, passed on: no replay possible
    assert env.app.bodies("/once503/big") == [("PUT", body)]
    assert env.unbuffered() == before + 1
    status, out = env.send("PUT", "/once503/big", body)   # the app answers 200 now: the body is intact
    assert (status, out) == (200, b"%d\n" % len(body))


def test_route_limit_zero_never_replays_a_body(env: Env) -> None:
    before = env.unbuffered()
    status, _ = env.send("PUT", "/once503/nobuf/x", b"tiny")
    assert status == 503
    assert env.app.bodies("/once503/nobuf/x") == [("PUT", b"tiny")]
    assert env.unbuffered() == before + 1


def test_post_is_never_retried_on_a_5xx(env: Env) -> None:
    status, _ = env.send("POST", "/once503/post", b"small")
    assert status == 503
    assert env.app.bodies("/once503/post") == [("POST", b"small")]


@pytest.mark.parametrize("where, value", [("cluster", 16 * 1024 * 1024 + 1), ("cluster", -1), ("route", 1 << 30)])
def test_out_of_range_limit_is_a_config_error_with_its_place(tmp_path: Path, where: str, value: int) -> None:
    from secmesh.sidecar import config as sidecar_config

    cluster_extra = f", retry_buffer_limit: {value}" if where == "cluster" else ""
    route_extra = f", retry_buffer_limit: {value}" if where == "route" else ""
    path = tmp_path / "bad.yaml"
    path.write_text(f"""\
trust_domain: cluster.local
certs: {{source: file, file: {{cert: c.pem, key: k.pem, bundle: b.pem}}}}
clusters:
  - {{name: app, endpoints: ["127.0.0.1:1"]{cluster_extra}}}
listeners:
  - name: out
    kind: outbound
    address: 127.0.0.1:2
    upstream: 127.0.0.1:3
    peer_ids: ["spiffe://cluster.local/ns/default/sa/server"]
    protocol: http
    http:
      routes:
        - {{name: r, path_prefix: /, cluster: app{route_extra}}}
""")
    with pytest.raises(ConfigError) as info:
        sidecar_config.load(path, env={})
    text = str(info.value) + " " + str(getattr(info.value, "location", ""))
    assert "retry_buffer_limit" in text and "16777216" in text, text
    assert f"{path}:{4 if where == 'cluster' else 14}:" in text, text
