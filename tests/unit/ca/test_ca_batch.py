"""`SigningBatch`: requests within `linger` are signed in one flush; one bad CSR fails only itself; with a
recorder, a request's one future resolves only after its issuance record is committed (or fails with it).
`SqliteLedger.try_record`: commits when the lock is free, gives way (nothing written) when it is not."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from secmesh.ca.batch import SigningBatch
from secmesh.ca.ledger import IssuanceRecord, SqliteLedger
from secmesh.ca.recorder import BatchRecorder, IssuanceLogError
from secmesh.ca.signer import Signer
from secmesh.clock import FakeClock
from secmesh.identity.csr import CsrError, build_csr
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import SpiffeId

SID = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")


def test_one_flush_signs_every_request_and_isolates_errors(signer: Signer, clock: FakeClock) -> None:
    async def main() -> list[object]:
        batch = SigningBatch(clock.now, linger=0.01)
        csrs = [build_csr(generate_p256(), str(SID)).decode() for _ in range(4)]
        futures = [batch.submit(signer, c, SID, 3600) for c in csrs[:2]]
        futures.append(batch.submit(signer, "garbage", SID, 3600))
        futures.append(batch.submit(signer, csrs[2], SID, 10**9))  # TTL over the max
        futures.append(batch.submit(signer, csrs[3], SID, 0))
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert batch.largest == 5
        return results

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results] == ["Issued", "Issued", "CsrError", "CAError", "Issued"]
    assert isinstance(results[2], CsrError) and results[2].reason == "malformed_csr"
    assert results[4].not_after == clock.now().replace(microsecond=0) + dt.timedelta(hours=24)


def _rec(serial: str) -> IssuanceRecord:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return IssuanceRecord(serial, "spiffe://example.org/ns/a/sa/b", "sub", "kid", now, now, now)


def test_try_record_gives_way_to_another_writer(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ca.db")
    other = sqlite3.connect(tmp_path / "ca.db", isolation_level=None)
    try:
        assert ledger.try_record([_rec("a1")])
        other.execute("BEGIN IMMEDIATE")  # another worker (or `ca revoke`) holds the write lock
        assert ledger.try_record([_rec("a2")]) is False
        other.execute("COMMIT")
        assert ledger.try_record([_rec("a2")])
        assert {r.serial for r in ledger.entries()} == {"a1", "a2"}
        with pytest.raises(sqlite3.IntegrityError):
            ledger.try_record([_rec("a1")])  # a real error still surfaces (and rolls back)
        assert ledger.try_record([_rec("a3")])
    finally:
        other.close()
        ledger.close()


class _BrokenLedger:
    def record(self, records) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def try_record(self, records) -> bool:
        raise sqlite3.OperationalError("disk I/O error")


def test_with_a_recorder_the_future_resolves_only_once_the_record_is_committed(signer: Signer, clock: FakeClock,
                                                                               tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ca.db")

    async def main() -> None:
        recorder = BatchRecorder(ledger, linger=0.01)
        recorder.start()
        batch = SigningBatch(clock.now, linger=0.001, recorder=recorder)
        csr = build_csr(generate_p256(), str(SID)).decode()
        future = batch.submit(signer, csr, SID, 3600, record_as=("system:serviceaccount:a:b", "kid1"))
        bad = batch.submit(signer, "garbage", SID, 3600, record_as=("system:serviceaccount:a:b", "kid1"))
        await asyncio.sleep(0.005)       # signed (the batch flushed) but still lingering in the recorder
        assert not future.done() and ledger.entries() == []
        with pytest.raises(CsrError):
            await bad                    # refused requests fail at once and write nothing
        issued = await future
        [entry] = ledger.entries()
        assert (entry.serial, entry.spiffe_id, entry.subject, entry.issuer_kid) == \
            (issued.serial_hex, str(SID), "system:serviceaccount:a:b", "kid1")
        assert (entry.not_before, entry.not_after, entry.issued_at) == (issued.not_before, issued.not_after,
                                                                        clock.now())
        await recorder.close()
        late = batch.submit(signer, csr, SID, 3600, record_as=("s", "k"))
        with pytest.raises(IssuanceLogError):
            await late                   # the CA is stopping: signed, but never handed out unlogged

    try:
        asyncio.run(main())
    finally:
        ledger.close()


def test_a_failed_commit_withholds_the_certificates(signer: Signer, clock: FakeClock) -> None:
    async def main() -> None:
        recorder = BatchRecorder(_BrokenLedger(), linger=0)  # type: ignore[arg-type]
        recorder.start()
        batch = SigningBatch(clock.now, linger=0, recorder=recorder)
        futures = [batch.submit(signer, build_csr(generate_p256(), str(SID)).decode(), SID, 3600,
                                record_as=("s", "k")) for _ in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, IssuanceLogError) and r.reason == "internal" for r in results)
        assert isinstance(results[0].__cause__, sqlite3.OperationalError)
        await recorder.close()

    asyncio.run(main())
