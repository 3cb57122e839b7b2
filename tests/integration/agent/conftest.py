"""Fixtures for the agent's integration tests: a CA directory + JWKS, `secmesh ca serve`, `secmesh agent`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.agent.agent_env import Agent, Pki, start_agent, start_ca
from tests.support.proc import Process, free_port, run_cli
from tests.support.tokens import TokenIssuer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("agent-pki")
    ca_dir = d / "ca"
    r = run_cli("ca", "init", "--trust-domain", "cluster.local", "--dir", str(ca_dir))
    assert r.returncode == 0, r.stderr
    r = run_cli("ca", "bundle", "--dir", str(ca_dir))
    assert r.returncode == 0, r.stderr
    roots = d / "roots.pem"
    roots.write_text(r.stdout)
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(d / "jwks.json")
    token_file = d / "istio-token"
    token_file.write_text(issuer.token("default", "workload"))
    return Pki(d, ca_dir, roots, jwks, issuer, token_file)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sma-", dir="/tmp"))  # AF_UNIX paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ca(pki: Pki, tmp_path: Path) -> Iterator[tuple[Process, int]]:
    port = free_port()
    with start_ca(pki, port, tmp_path) as proc:
        yield proc, port


@pytest.fixture
def agent(pki: Pki, ca, sockdir: Path, tmp_path: Path) -> Iterator[Agent]:
    a = start_agent(pki, ca[1], sockdir / "socket", tmp_path)
    try:
        yield a
    finally:
        a.proc.stop()
