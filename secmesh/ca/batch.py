"""Run the CSR checks and signatures of concurrent requests back to back, once per loop turn.

Measured on the 2-core box: the same CSR check + signature costs ~185 µs of CPU in a tight loop
but ~350 µs when 4 MB of other memory was touched in between, which is what grpc, TLS and the
interpreter do between two requests on a busy server (P-256 code walks large precomputed
tables). Requests therefore queue here for `linger` after the first one, and one callback
handles them all in a row with warm caches. grpc.aio hands the loop about one new call per
turn, so flushing on the next turn batched nothing (1.03 per flush); with 2 ms, 8-9 calls share
a flush under load and the server's CPU per call fell from ~640 to ~530 µs. A lone request
waits at most `linger`; nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from typing import Callable

from secmesh.ca.signer import Issued, Signer
from secmesh.identity.csr import parse_verified_key
from secmesh.identity.spiffe import SpiffeId

LINGER_SECONDS = 0.002
Job = tuple[Signer, str, SpiffeId, int, "asyncio.Future[Issued]"]


class SigningBatch:
    def __init__(self, now: Callable[[], _dt.datetime], linger: float = LINGER_SECONDS) -> None:
        self._now = now
        self.linger = linger
        self._jobs: list[Job] = []
        self.largest = 0

    def submit(self, signer: Signer, csr_pem: str, spiffe_id: SpiffeId, ttl_seconds: int) -> asyncio.Future[Issued]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Issued] = loop.create_future()
        if not self._jobs:
            if self.linger:
                loop.call_later(self.linger, self._flush)
            else:
                loop.call_soon(self._flush)
        self._jobs.append((signer, csr_pem, spiffe_id, ttl_seconds, future))
        return future

    def _flush(self) -> None:
        jobs, self._jobs = self._jobs, []
        self.largest = max(self.largest, len(jobs))
        now = self._now()
        for signer, csr_pem, spiffe_id, ttl_seconds, future in jobs:
            if future.cancelled():
                continue
            try:
                csr, public_key = parse_verified_key(csr_pem)
                issued = signer.sign_csr(csr, spiffe_id, now=now, requested_ttl_seconds=ttl_seconds,
                                         public_key=public_key)
            except Exception as exc:  # noqa: BLE001 - each request gets its own error; the batch goes on
                future.set_exception(exc)
            else:
                future.set_result(issued)
