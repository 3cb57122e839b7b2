"""An agent assembled in-process on a real Unix socket, with the in-process CA, for fast gRPC tests."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import AsyncIterator

import grpc.aio
from cryptography.hazmat.primitives import serialization

from secmesh.agent.attest import Attestor
from secmesh.agent.ca_client import Backoff
from secmesh.agent.cache import SecretCache
from secmesh.agent.jwt_authority import JwtAuthority
from secmesh.agent.rotator import IdentityManager
from secmesh.agent.sds import SdsService, register
from secmesh.agent.server import SocketClaim, start_server
from secmesh.agent.workload_api import WorkloadApi
from secmesh.identity.tokens import StaticJwks, TokenValidator
from tests.support.tokens import TokenIssuer
from tests.unit.agent.memca import TD, MemCa


class Harness:
    def __init__(self, ca: MemCa, cache: SecretCache, manager: IdentityManager, sds: SdsService,
                 socket_path: Path) -> None:
        self.ca, self.cache, self.manager, self.sds, self.socket_path = ca, cache, manager, sds, socket_path

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"unix:{self.socket_path}")


@contextlib.asynccontextmanager
async def agent(tmp: Path, issuer: TokenIssuer, *, ttl: float = 3600, token_file: Path | None = None,
                unknown_resource: str = "istio") -> AsyncIterator[Harness]:
    ca = MemCa(tmp / "ca", issuer)
    validator = TokenValidator(StaticJwks.from_dict(issuer.jwks()), trust_domain=TD)
    attestor = Attestor(validator, token_file)
    cache = SecretCache()
    cache.set_file_roots([ca.root])
    manager = IdentityManager(cache, ca, ttl_seconds=ttl, fraction=0.5, jitter=0.0,
                              backoff=Backoff(initial=0.05, maximum=0.2))
    sds = SdsService(attestor, manager, cache, unknown_resource=unknown_resource)
    wapi = WorkloadApi(attestor, manager, cache, JwtAuthority(TD))
    sockdir = Path(tempfile.mkdtemp(prefix="smh-", dir="/tmp"))
    claim = SocketClaim(sockdir / "socket", 0o660)
    claim.acquire()
    server = await start_server(claim, [wapi.handler()], [(register, sds)])
    try:
        yield Harness(ca, cache, manager, sds, claim.path)
    finally:
        await server.stop(0)
        await manager.close()
        claim.release()
        for p in sockdir.iterdir():
            p.unlink()
        os.rmdir(sockdir)


def root_pem(ca: MemCa) -> bytes:
    return ca.root.public_bytes(serialization.Encoding.PEM)
