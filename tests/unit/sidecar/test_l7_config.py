"""L7 configuration in the sidecar YAML: listeners' `http` sections, `clusters`, and errors with file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from secmesh.errors import ConfigError
from secmesh.sidecar import config as sconfig

BASE = """\
certs: {source: file, file: {cert: c, key: k, bundle: b}}
"""


def load(tmp_path: Path, text: str) -> sconfig.SidecarConfig:
    p = tmp_path / "s.yaml"
    p.write_text(BASE + textwrap.dedent(text))
    return sconfig.load(p, env={})


def test_http_listener_with_routes_and_clusters(tmp_path):
    cfg = load(tmp_path, """\
        clusters:
          - name: api
            endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
            lb_policy: least_request
            request_timeout: 2s
        listeners:
          - name: out
            kind: outbound
            address: 127.0.0.1:15001
            upstream: 127.0.0.1:16006
            peer_ids: ["spiffe://cluster.local/ns/default/sa/backend"]
            protocol: http
            http:
              header_timeout: 500ms
              routes:
                - {name: api, path_prefix: /api/, methods: [get], cluster: api, timeout: 1s}
                - name: canary
                  headers: [{name: X-Canary, exact: "1"}]
                  cluster: api
        """)
    lst = cfg.listeners[0]
    assert lst.protocol == "http" and lst.http.header_timeout == 0.5
    r0, r1 = lst.http.routes
    assert (r0.cluster, r0.methods, r0.timeout) == ("api", ["GET"], 1.0)
    assert r1.headers[0].name == "x-canary"
    c = cfg.clusters[0]
    assert c.endpoints == ["127.0.0.1:9001", "127.0.0.1:9002"] and c.request_timeout == 2.0


def test_defaults_keep_l4_configs_working(tmp_path):
    cfg = load(tmp_path, """\
        listeners:
          - {name: in, address: "127.0.0.1:15006", upstream: "127.0.0.1:8080", allow_all: true}
        """)
    assert cfg.listeners[0].protocol == "tcp" and cfg.clusters == []
    assert cfg.listeners[0].http.routes == [] and cfg.listeners[0].http.deny_header is True


@pytest.mark.parametrize("text,message,line", [
    ("""\
        listeners:
          - name: out
            kind: outbound
            address: 127.0.0.1:1
            upstream: 127.0.0.1:2
            peer_ids: ["spiffe://cluster.local/ns/a/sa/b"]
            protocol: http
            http: {routes: [{path_prefix: /, cluster: nowhere}]}
        """, "unknown cluster 'nowhere'", None),
    ("""\
        clusters: [{name: a, endpoints: ["x"]}]
        listeners: [{name: in, address: "127.0.0.1:1", upstream: "127.0.0.1:2", allow_all: true}]
        """, "HOST:PORT", 2),
    ("""\
        clusters:
          - {name: a, endpoints: ["127.0.0.1:1"], tls: true}
        listeners: [{name: in, address: "127.0.0.1:1", upstream: "127.0.0.1:2", allow_all: true}]
        """, "peer_ids", 3),
    ("""\
        clusters:
          - {name: a, endpoints: ["127.0.0.1:1"], max_connections_per_endpoint: 0}
        listeners: [{name: in, address: "127.0.0.1:1", upstream: "127.0.0.1:2", allow_all: true}]
        """, "max_connections_per_endpoint >= 1", 3),
    ("""\
        clusters:
          - {name: a, endpoints: ["127.0.0.1:1"], max_pending_requests: -1}
        listeners: [{name: in, address: "127.0.0.1:1", upstream: "127.0.0.1:2", allow_all: true}]
        """, "max_pending_requests must be >= 0", 3),
    ("""\
        listeners:
          - name: in
            address: 127.0.0.1:1
            upstream: 127.0.0.1:2
            allow_all: true
            protocol: http
            http: {routes: [{path_regex: "(", cluster: a}]}
        """, "invalid regular expression", None),
    ("""\
        listeners:
          - name: in
            address: 127.0.0.1:1
            upstream: 127.0.0.1:2
            allow_all: true
            http: {retires: 3}
        """, "unknown field `listeners[0].http.retires`", 7),
])
def test_bad_l7_config_names_the_place(tmp_path, text, message, line):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert message in str(e.value)
    if line is not None:
        assert f"s.yaml:{line}:" in str(e.value)
