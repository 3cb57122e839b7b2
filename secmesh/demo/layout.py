"""Where everything of one demo run lives: directories, loopback ports, sockets and config files.

One frozen `Layout` is computed up front so every later stage (process start, probes, summary)
reads the same names. Config files are written here from the production schemas
(`configs/agent.yaml` flags, `configs/sidecar.yaml`), not from test fixtures.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from secmesh.demo.procs import free_port

TRUST_DOMAIN = "demo.local"
NAMESPACE = "shop"
APP_PORT = 8080          # the orders app's port as policies see it (Istio's workload port)
APP_PROTOCOL = "http"    # what the orders app speaks; principal-only rules are decided at connection time
MAX_UNIX_PATH = 100      # AF_UNIX paths are limited to 107 bytes; keep a margin


def spiffe_id(sa: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}"


def principal(sa: str) -> str:
    """Istio's principal form (`<td>/ns/<ns>/sa/<sa>`) as AuthorizationPolicies write it."""
    return f"{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}"


@dataclass(frozen=True)
class Pod:
    """One workload with its own agent (istio-agent per pod) and sidecar."""

    name: str                 # service account name, also the pod's label `app`
    token_file: Path
    agent_socket: Path
    agent_admin: int
    sidecar_admin: int
    sidecar_config: Path
    port: int                 # frontend: its outbound listener; orders: its inbound listener

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.name)


@dataclass(frozen=True)
class Layout:
    root: Path
    sockets: Path             # == root unless root's path is too long for AF_UNIX
    logs: Path
    ca_dir: Path
    roots_pem: Path
    jwks: Path
    policies: Path
    intruder_dir: Path
    ca_port: int
    ca_admin: int
    backend_port: int
    frontend: Pod
    orders: Pod
    orders_host: str = "127.0.0.1"   # where orders' inbound listens and frontend dials (its pod IP with --netns)

    @property
    def pods(self) -> tuple[Pod, Pod]:
        return self.frontend, self.orders

    @property
    def separate_sockets(self) -> bool:
        return self.sockets != self.root

    @classmethod
    def create(cls, base: Path | None = None, *, orders_host: str = "127.0.0.1") -> Layout:
        root = Path(tempfile.mkdtemp(prefix="secmesh-demo-", dir=base))
        sockets = root
        if len(str(root / "frontend-agent.sock")) > MAX_UNIX_PATH:
            sockets = Path(tempfile.mkdtemp(prefix="smd-", dir="/tmp"))
        for sub in ("logs", "pods", "policies"):
            (root / sub).mkdir()

        def pod(name: str) -> Pod:
            return Pod(name, root / "pods" / f"{name}.token", sockets / f"{name}-agent.sock", free_port(),
                       free_port(), root / "pods" / f"{name}-sidecar.yaml", free_port())

        return cls(root=root, sockets=sockets, logs=root / "logs", ca_dir=root / "ca", roots_pem=root / "roots.pem",
                   jwks=root / "jwks.json", policies=root / "policies", intruder_dir=root / "pods" / "intruder",
                   ca_port=free_port(), ca_admin=free_port(), backend_port=free_port(),
                   frontend=pod("frontend"), orders=pod("orders"), orders_host=orders_host)

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
                if not isinstance(v, dict)} | {
            "frontend": {k: str(v) for k, v in dataclasses.asdict(self.frontend).items()},
            "orders": {k: str(v) for k, v in dataclasses.asdict(self.orders).items()}}
