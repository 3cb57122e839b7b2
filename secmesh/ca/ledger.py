"""The issuance log: every certificate the CA signed, and which of them are revoked.

`Ledger` is the small interface the rest of the CA uses; `SqliteLedger` is the one backend so
far. A PostgreSQL backend for a replicated CA implements the same five methods (the schema is
plain SQL; `record` is a batch insert so group commit works on either). SQLite runs in WAL mode
with `synchronous=NORMAL`: readers (`ca list`, `ca crl`) never block the serving CA, and one
transaction per batch keeps fsyncs off the per-request path.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, Sequence

from cryptography import x509

from secmesh.errors import CAError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issuance (
    serial      TEXT PRIMARY KEY,          -- lower-case hex, no colons
    spiffe_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,             -- token `sub` (or `operator` for `ca issue`)
    issuer_kid  TEXT NOT NULL,             -- SKI (hex) of the issuing CA: which CRL lists it
    not_before  TEXT NOT NULL,             -- ISO 8601 UTC
    not_after   TEXT NOT NULL,
    issued_at   TEXT NOT NULL,
    revoked_at  TEXT,
    reason      TEXT
);
CREATE INDEX IF NOT EXISTS issuance_revoked ON issuance (issuer_kid, revoked_at);
"""

# RFC 5280 §5.3.1 CRLReason names (removeFromCRL is for delta CRLs only, so not offered)
REVOCATION_REASONS = ("unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
                      "cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise")


def canonical_reason(text: str) -> str:
    """Accept an RFC 5280 reason name in any case, or snake_case (`key_compromise`)."""
    wanted = text.replace("_", "").replace("-", "").lower()
    for name in REVOCATION_REASONS:
        if name.lower() == wanted:
            return name
    raise CAError(f"unknown revocation reason {text!r}; use one of: {', '.join(REVOCATION_REASONS)}",
                  reason="bad_reason")


def normalize_serial(text: str | int) -> str:
    """`0x1F`, `1f`, `1F:2A` or an int → `1f2a` (the ledger's key)."""
    if isinstance(text, int):
        return format(text, "x")
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        return format(int(cleaned, 16), "x")
    except ValueError:
        raise CAError(f"not a serial number: {text!r} (hex expected)", reason="bad_serial") from None


@dataclass(frozen=True)
class IssuanceRecord:
    serial: str
    spiffe_id: str
    subject: str
    issuer_kid: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    issued_at: _dt.datetime
    revoked_at: _dt.datetime | None = None
    reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, object]:
        return {"serial": self.serial, "spiffe_id": self.spiffe_id, "subject": self.subject,
                "issuer_kid": self.issuer_kid, "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(), "issued_at": self.issued_at.isoformat(),
                "revoked": self.revoked, "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "reason": self.reason}


def key_id(cert: x509.Certificate) -> str:
    """Hex SKI of a CA certificate (computed from the key when the extension is absent)."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()  # type: ignore[arg-type]


class Ledger(Protocol):
    def record(self, records: Sequence[IssuanceRecord]) -> None:
        """Insert a batch atomically (one transaction)."""

    def try_record(self, records: Sequence[IssuanceRecord]) -> bool:
        """`record` without waiting: False (nothing written) when another thread or process holds the lock.

        Lets the event loop commit a batch itself in the common, uncontended case (no thread hand-off,
        no GIL ping-pong) and fall back to `record` on a thread only when it would have to wait.
        """

    def get(self, serial: str) -> IssuanceRecord | None: ...

    def entries(self, *, limit: int | None = None) -> list[IssuanceRecord]:
        """Newest first."""

    def revoke(self, serial: str, reason: str, when: _dt.datetime) -> IssuanceRecord: ...

    def revoked(self, issuer_kid: str | None = None) -> list[IssuanceRecord]: ...

    def close(self) -> None: ...


def _ts(value: _dt.datetime) -> str:
    return value.astimezone(_dt.timezone.utc).isoformat()


def _dt_of(text: str | None) -> _dt.datetime | None:
    return _dt.datetime.fromisoformat(text) if text else None


_COLUMNS = "serial, spiffe_id, subject, issuer_kid, not_before, not_after, issued_at, revoked_at, reason"


def _rows(records: Sequence[IssuanceRecord]) -> list[tuple]:
    return [(r.serial, r.spiffe_id, r.subject, r.issuer_kid, _ts(r.not_before), _ts(r.not_after),
             _ts(r.issued_at), _ts(r.revoked_at) if r.revoked_at else None, r.reason) for r in records]


def _row(row: tuple) -> IssuanceRecord:
    return IssuanceRecord(row[0], row[1], row[2], row[3], _dt_of(row[4]), _dt_of(row[5]),  # type: ignore[arg-type]
                          _dt_of(row[6]), _dt_of(row[7]), row[8])  # type: ignore[arg-type]


class SqliteLedger:
    """`Ledger` on one SQLite file; thread-safe (one connection behind a lock, WAL for readers).

    Several processes may hold one each (the workers of `ca serve --workers N`): WAL lets readers
    run beside the writer, and writers queue on SQLite's lock for up to `timeout` seconds.
    """

    def __init__(self, path: Path | str, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._timeout = timeout
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=timeout)
        if fresh:
            self.path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record(self, records: Sequence[IssuanceRecord]) -> None:
        if not records:
            return
        rows = _rows(records)
        with self._lock:
            # IMMEDIATE: take the write lock up front, so several `serve` workers sharing this file wait on
            # the busy timeout instead of failing a deferred transaction's lock upgrade
            self._db.execute("BEGIN IMMEDIATE")
            self._insert_and_commit(rows)

    def _insert_and_commit(self, rows: list[tuple]) -> None:
        """Inside an open transaction: insert `rows` and commit, or roll back and re-raise."""
        try:
            self._db.executemany(f"INSERT INTO issuance ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def try_record(self, records: Sequence[IssuanceRecord]) -> bool:
        """`record` without waiting: False (nothing written) when another thread or process holds the lock.

        Lets the event loop commit a batch itself in the common, uncontended case (no thread hand-off,
        no GIL ping-pong) and fall back to `record` on a thread only when it would have to wait.
        """
        if not records or not self._lock.acquire(blocking=False):
            return not records
        try:
            self._db.execute("PRAGMA busy_timeout = 0")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            self._insert_and_commit(_rows(records))
            return True
        finally:
            self._lock.release()

    def get(self, serial: str) -> IssuanceRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM issuance WHERE serial = ?",
                                   (normalize_serial(serial),)).fetchone()
        return _row(row) if row else None

    def entries(self, *, limit: int | None = None) -> list[IssuanceRecord]:
        sql = f"SELECT {_COLUMNS} FROM issuance ORDER BY issued_at DESC, serial"
        with self._lock:
            rows = self._db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        return [_row(r) for r in rows]

    def revoke(self, serial: str, reason: str, when: _dt.datetime) -> IssuanceRecord:
        key = normalize_serial(serial)
        reason = canonical_reason(reason)
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM issuance WHERE serial = ?", (key,)).fetchone()
            if row is None:
                raise CAError(f"no certificate with serial {key} in the issuance log", reason="not_found")
            record = _row(row)
            if record.revoked:
                raise CAError(f"certificate {key} is already revoked ({record.reason})", reason="already_revoked")
            self._db.execute("UPDATE issuance SET revoked_at = ?, reason = ? WHERE serial = ?",
                             (_ts(when), reason, key))
        return replace(record, revoked_at=when, reason=reason)

    def revoked(self, issuer_kid: str | None = None) -> list[IssuanceRecord]:
        sql = f"SELECT {_COLUMNS} FROM issuance WHERE revoked_at IS NOT NULL"
        args: tuple = ()
        if issuer_kid is not None:
            sql += " AND issuer_kid = ?"
            args = (issuer_kid,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY revoked_at", args).fetchall()
        return [_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
