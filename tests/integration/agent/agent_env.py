"""Helpers for the agent's integration tests: start `secmesh ca serve` and `secmesh agent` as processes."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.proc import Process, free_port, start_cli, tcp_ready, unix_ready, wait_until
from tests.support.tokens import TokenIssuer


@dataclass
class Pki:
    dir: Path
    ca_dir: Path
    roots: Path
    jwks: Path
    issuer: TokenIssuer
    token_file: Path


@dataclass
class Agent:
    proc: Process
    socket: Path
    admin_port: int

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def ready(self) -> bool:
        try:
            return self.http("/ready")[0] == 200
        except OSError:
            return False


def start_ca(pki: Pki, port: int, tmp_path: Path, name: str = "ca") -> Process:
    proc = start_cli("ca", "serve", "--dir", str(pki.ca_dir), "--listen", f"127.0.0.1:{port}", "--jwks",
                     str(pki.jwks), tmp_path=tmp_path, name=name)
    wait_until(tcp_ready("127.0.0.1", port), timeout=20, what="CA port", proc=proc.popen)
    return proc


def start_agent(pki: Pki, ca_port: int, socket: Path, tmp_path: Path, *extra: str, name: str = "agent",
                wait: bool = True) -> Agent:
    admin = free_port()
    proc = start_cli("agent", "--socket", str(socket), "--ca-address", f"127.0.0.1:{ca_port}",
                     "--ca-root", str(pki.roots), "--jwks", str(pki.jwks), "--token-file", str(pki.token_file),
                     "--ttl", "6s", "--backoff-initial", "200ms", "--backoff-max", "1s",
                     "--admin", f"127.0.0.1:{admin}", *extra, tmp_path=tmp_path, name=name)
    agent = Agent(proc, socket, admin)
    if wait:
        wait_until(agent.ready, timeout=20, what="agent /ready", proc=proc.popen)
        assert unix_ready(socket)()
    return agent
