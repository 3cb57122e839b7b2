"""The SQLite issuance log, revocation reasons, and the CRL built from it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from secmesh.ca.crl import build_crl
from secmesh.ca.ledger import (IssuanceRecord, SqliteLedger, canonical_reason, key_id, normalize_serial)
from secmesh.errors import CAError

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _rec(serial: str, kid: str = "aa", minutes: int = 0) -> IssuanceRecord:
    return IssuanceRecord(serial=serial, spiffe_id="spiffe://example.org/ns/a/sa/b",
                          subject="system:serviceaccount:a:b", issuer_kid=kid,
                          not_before=NOW - dt.timedelta(minutes=2), not_after=NOW + dt.timedelta(hours=24),
                          issued_at=NOW + dt.timedelta(minutes=minutes))


@pytest.fixture
def ledger(tmp_path: Path):
    db = SqliteLedger(tmp_path / "ca.db")
    yield db
    db.close()


def test_record_get_list(ledger: SqliteLedger, tmp_path: Path) -> None:
    ledger.record([_rec("1a"), _rec("2b", minutes=1)])
    ledger.record([])
    assert ledger.get("1A") == _rec("1a")
    assert ledger.get("0x2b").issued_at == NOW + dt.timedelta(minutes=1)
    assert ledger.get("ff") is None
    assert [r.serial for r in ledger.entries()] == ["2b", "1a"]  # newest first
    assert [r.serial for r in ledger.entries(limit=1)] == ["2b"]
    assert (tmp_path / "ca.db").stat().st_mode & 0o077 == 0
    mode = ledger._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_batch_is_atomic(ledger: SqliteLedger) -> None:
    ledger.record([_rec("1a")])
    with pytest.raises(Exception):
        ledger.record([_rec("3c"), _rec("1a")])  # duplicate serial: the whole batch rolls back
    assert ledger.get("3c") is None


def test_revoke(ledger: SqliteLedger) -> None:
    ledger.record([_rec("1a", kid="aa"), _rec("2b", kid="bb")])
    record = ledger.revoke("1a", "key_compromise", NOW)
    assert record.revoked and record.reason == "keyCompromise"
    ledger.revoke("2b", "superseded", NOW)
    assert [r.serial for r in ledger.revoked("aa")] == ["1a"]
    assert {r.serial for r in ledger.revoked()} == {"1a", "2b"}
    with pytest.raises(CAError) as err:
        ledger.revoke("1a", "superseded", NOW)
    assert err.value.reason == "already_revoked"
    with pytest.raises(CAError) as err:
        ledger.revoke("99", "superseded", NOW)
    assert err.value.reason == "not_found"


@pytest.mark.parametrize("text, name", [("keyCompromise", "keyCompromise"), ("KEYCOMPROMISE", "keyCompromise"),
                                        ("cessation_of_operation", "cessationOfOperation"),
                                        ("aACompromise", "aACompromise"), ("unspecified", "unspecified")])
def test_reason_names(text: str, name: str) -> None:
    assert canonical_reason(text) == name


def test_bad_reason_and_serial() -> None:
    with pytest.raises(CAError, match="keyCompromise"):
        canonical_reason("lost-it")
    with pytest.raises(CAError):
        normalize_serial("xyz")
    assert normalize_serial("0A:BC") == "abc"


def test_crl_contents(material, ledger: SqliteLedger) -> None:
    inter = material.current.intermediate_cert
    kid = key_id(inter)
    ledger.record([_rec("1a", kid=kid), _rec("2b", kid=kid), _rec("3c", kid="other")])
    ledger.revoke("1a", "keyCompromise", NOW)
    ledger.revoke("2b", "unspecified", NOW)
    ledger.revoke("3c", "superseded", NOW)
    crl = build_crl(inter, material.current.intermediate_key, ledger.revoked(kid), now=NOW,
                    next_update=dt.timedelta(hours=6), crl_number=7)
    assert crl.is_signature_valid(inter.public_key())
    assert crl.issuer == inter.subject
    assert crl.last_update_utc == NOW and crl.next_update_utc == NOW + dt.timedelta(hours=6)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier.hex() == kid
    assert {r.serial_number for r in crl} == {0x1A, 0x2B}  # 3c belongs to another issuer's CRL
    entry = crl.get_revoked_certificate_by_serial_number(0x1A)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert len(crl.get_revoked_certificate_by_serial_number(0x2B).extensions) == 0  # unspecified: no reason ext


def _write_many(path: str, prefix: str, count: int) -> None:
    db = SqliteLedger(path)
    try:
        for i in range(0, count, 5):  # small batches, so the processes' transactions interleave
            db.record([_rec(f"{prefix}{j:04x}") for j in range(i, i + 5)])
    finally:
        db.close()


def test_several_processes_write_one_ledger(tmp_path: Path) -> None:
    """What `ca serve --workers N` does: one connection per process on one WAL file, no lost rows."""
    import multiprocessing as mp

    path = tmp_path / "ca.db"
    SqliteLedger(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), f"{p:x}f", 300)) for p in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    db = SqliteLedger(path)
    try:
        assert len(db.entries()) == 900
    finally:
        db.close()
