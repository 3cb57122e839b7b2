"""configs/agent.yaml → AgentConfig: defaults users expect, octal modes, env/flag precedence, errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmesh.agent.config import AgentConfig, load
from secmesh.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_defaults_match_istio_agent() -> None:
    cfg = load(None, env={})
    assert cfg.socket.path == Path("/var/run/secrets/workload-spiffe-uds/socket")
    assert cfg.socket.mode_bits == 0o660
    assert cfg.identity.trust_domain == "cluster.local"
    assert cfg.identity.ttl == 24 * 3600
    assert cfg.identity.rotation_fraction == 0.5 and cfg.identity.rotation_jitter == 0.01
    assert cfg.token.file == "/var/run/secrets/tokens/istio-token"
    assert cfg.token.audiences == ["istio-ca"]
    assert cfg.sds.unknown_resource == "istio"


def test_shipped_config_file_equals_the_defaults() -> None:
    assert load(REPO / "configs" / "agent.yaml", env={}) == AgentConfig()


@pytest.mark.parametrize("text,bits", [("0600", 0o600), ("0o640", 0o640), ("660", 0o660), ("'0660'", 0o660)])
def test_socket_mode_is_always_octal(tmp_path: Path, text: str, bits: int) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(f"socket:\n  mode: {text}\n")
    assert load(f, env={}).socket.mode_bits == bits


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("identity:\n  ttl: 1h\nca:\n  address: file:1\n")
    env = {"SECMESH_AGENT_IDENTITY_TTL": "2h", "SECMESH_AGENT_CA_ADDRESS": "env:2"}
    cfg = load(f, {"ca": {"address": "flag:3"}}, env=env)
    assert cfg.identity.ttl == 7200 and cfg.ca.address == "flag:3"


@pytest.mark.parametrize("yaml_text,needle", [
    ("socket:\n  pathh: /x\n", "a.yaml:2:3: unknown field `socket.pathh` (did you mean `socket.path`?)"),
    ("socket:\n  mode: '0999'\n", "socket mode must be octal"),
    ("identity:\n  rotation_fraction: 1.5\n", "rotation_fraction"),
    ("sds:\n  unknown_resource: maybe\n", "unknown_resource"),
    ("admin:\n  address: 0.0.0.0:15020\n", "loopback"),
    ("identity:\n  ttl: soon\n", "not a duration"),
])
def test_bad_config_names_the_place(tmp_path: Path, yaml_text: str, needle: str) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load(f, env={})
    assert needle in str(info.value)
    assert str(f) in str(info.value)
