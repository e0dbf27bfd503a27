"""A hospital's privacy ledger: one append-only SQLite table of every privacy spend.

Write-ahead: a round's spend is committed (``synchronous=FULL``) before the update leaves the
hospital, so a crash can over-count but never under-count. The mechanism history in the ledger is
all an accountant needs: a restarted client rebuilds its accountant from it, and an auditor
recomputes every recorded epsilon.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fedmeta.privacy.accounting import Mechanism

__all__ = ["LedgerRow", "PrivacyLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT    NOT NULL,
    round         INTEGER NOT NULL,
    hospital      TEXT    NOT NULL,
    algorithm     TEXT    NOT NULL,
    mechanism     TEXT    NOT NULL,
    sigma         REAL    NOT NULL,
    sample_rate   REAL    NOT NULL,
    steps         INTEGER NOT NULL,
    max_grad_norm REAL    NOT NULL,
    delta         REAL    NOT NULL,
    accountant    TEXT    NOT NULL,
    epsilon       REAL    NOT NULL,
    max_epsilon   REAL    NOT NULL,
    recorded_at   TEXT    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS spend_no_update BEFORE UPDATE ON spend
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS spend_no_delete BEFORE DELETE ON spend
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
"""


@dataclass(frozen=True)
class LedgerRow:
    id: int
    run_id: str
    round: int
    hospital: str
    algorithm: str
    mechanism: str
    sigma: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon: float
    max_epsilon: float
    recorded_at: str

    @property
    def as_mechanism(self) -> Mechanism:
        return Mechanism(self.sigma, self.sample_rate, self.steps)


class PrivacyLedger:
    """The ledger file of one hospital."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @staticmethod
    def read_only(path: str | Path) -> list[LedgerRow]:
        """The rows of an existing ledger, opened read-only (an auditor must not write to it)."""
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            cur = db.execute(f"SELECT {', '.join(LedgerRow.__dataclass_fields__)} FROM spend ORDER BY id")
            return [LedgerRow(*r) for r in cur.fetchall()]
        finally:
            db.close()

    def rows(self) -> list[LedgerRow]:
        with self._connect() as db:
            cur = db.execute(f"SELECT {', '.join(LedgerRow.__dataclass_fields__)} FROM spend ORDER BY id")
            return [LedgerRow(*r) for r in cur.fetchall()]

    def history(self) -> list[Mechanism]:
        return [r.as_mechanism for r in self.rows()]

    def record(self, *rows: dict[str, object]) -> None:
        """Append spends (keyword dicts of the columns) in one transaction, durable before returning."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        columns = [c for c in LedgerRow.__dataclass_fields__ if c not in ("id", "recorded_at")]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for row in rows:
                if set(row) != set(columns):
                    raise ValueError(f"ledger row needs exactly the columns {columns}")
                db.execute(f"INSERT INTO spend ({', '.join(columns)}, recorded_at) "
                           f"VALUES ({', '.join('?' * (len(columns) + 1))})",
                           (*(row[c] for c in columns), now))
            db.execute("COMMIT")
