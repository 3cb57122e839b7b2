"""Sidecar config: defaults, YAML, env, flags, and errors that name file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmesh.errors import ConfigError
from secmesh.sidecar.config import MtlsMode, load

REPO = Path(__file__).resolve().parents[3]

BASE = """\
listeners:
  - name: in
    address: 127.0.0.1:15006
    upstream: 127.0.0.1:8080
    allow_principals: ["spiffe://cluster.local/ns/default/**"]
"""


def test_shipped_config_loads_with_documented_defaults():
    cfg = load(REPO / "configs" / "sidecar.yaml")
    assert cfg.tls.min_version == "1.3" and cfg.trust_domain == "cluster.local"
    assert cfg.certs.sds.socket == "/var/run/secrets/workload-spiffe-uds/socket"
    assert {lst.kind for lst in cfg.listeners} == {"inbound", "outbound"}


def test_env_and_flags_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(BASE + "    mtls_mode: permissive\n")
    cfg = load(p, env={"SECMESH_WORKERS": "3", "SECMESH_TLS_MIN_VERSION": "1.2"}, flags={"workers": 2})
    assert cfg.workers == 2 and cfg.tls.min_version == "1.2"
    assert cfg.listeners[0].mtls_mode is MtlsMode.PERMISSIVE


@pytest.mark.parametrize("extra, where, text", [
    ("    mtls_mod: STRICT\n", ":6:5", "did you mean `listeners[0].mtls_mode`"),
    ("    mtls_mode: LOOSE\n", ":2:5", "STRICT, PERMISSIVE or DISABLE"),
    ("    allow_all: true\n", ":2:5", "not both"),
    ("    kind: sideways\n", ":2:5", "inbound or outbound"),
])
def test_errors_name_the_place(tmp_path, extra, where, text):
    p = tmp_path / "c.yaml"
    p.write_text(BASE + extra)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert f"{p}{where}" in str(e.value) and text in str(e.value)


def test_outbound_needs_peer_ids_and_listeners_are_required(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("listeners:\n  - {name: o, kind: outbound, address: '127.0.0.1:1', upstream: '127.0.0.1:2'}\n")
    with pytest.raises(ConfigError, match="peer_ids"):
        load(p)
    p.write_text("workers: 1\n")
    with pytest.raises(ConfigError, match="no listeners"):
        load(p)


def test_admin_must_be_loopback(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(BASE + "admin: {address: '0.0.0.0:15000'}\n")
    with pytest.raises(ConfigError, match="loopback"):
        load(p)
