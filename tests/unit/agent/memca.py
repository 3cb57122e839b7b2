"""An in-process CA for agent unit tests: the project's real signer and token validator, no network.

It stands where `secmesh ca serve` stands in the integration tests (same `Signer`, same
`TokenValidator`, identity taken from the token and never from the CSR), and can be told to fail
the next N calls or to hold calls until released, to exercise the agent's retry paths.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from secmesh.ca.signer import Signer, TtlPolicy
from secmesh.ca.store import init_ca
from secmesh.errors import CAError
from secmesh.identity.csr import parse_and_verify
from secmesh.identity.tokens import StaticJwks, TokenValidator
from tests.support.tokens import TokenIssuer

TD = "cluster.local"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class MemCa:
    def __init__(self, directory: Path, issuer: TokenIssuer, trust_domain: str = TD) -> None:
        material = init_ca(directory, trust_domain, now=now() - dt.timedelta(hours=1))
        gen = material.current
        self.root = gen.root_cert
        self.signer = Signer(gen.intermediate_cert, gen.intermediate_key, root=gen.root_cert,
                             ttl=TtlPolicy(default=dt.timedelta(hours=24), maximum=dt.timedelta(days=90)))
        self.validator = TokenValidator(StaticJwks.from_dict(issuer.jwks()), trust_domain=trust_domain)
        self.calls = 0
        self.fail_next = 0
        self.fail_reason = "unavailable"
        self.gate: asyncio.Event | None = None

    async def sign(self, csr_pem: bytes | str, token: str, ttl_seconds: int) -> list[str]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise CAError("injected failure", reason=self.fail_reason)
        identity = self.validator.validate(token)
        issued = self.signer.sign_csr(parse_and_verify(csr_pem), identity.spiffe_id, now=now(),
                                      requested_ttl_seconds=ttl_seconds)
        return self.signer.chain(issued)
