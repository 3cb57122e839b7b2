"""Fixtures: one test PKI per module, backends that always stop."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.sidecar.harness import Backend
from tests.integration.sidecar.pki import TestCA, sa


class Pki:
    def __init__(self, root: Path) -> None:
        self.dir = root
        self.ca = TestCA("cluster.local")
        self.ca_pem = self.ca.write(root, "ca")
        self.server = self.ca.issue(sa("default", "server"))
        self.client = self.ca.issue(sa("default", "client"))
        self.server_cert, self.server_key = self.server.write(root, "server")
        self.client_cert, self.client_key = self.client.write(root, "client")
        self.server_id = "spiffe://cluster.local/ns/default/sa/server"
        self.client_id = "spiffe://cluster.local/ns/default/sa/client"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def echo() -> Iterator[Backend]:
    b = Backend("echo")
    yield b
    b.close()


@pytest.fixture
def http_backend() -> Iterator[Backend]:
    b = Backend("http")
    yield b
    b.close()
