"""A hospital's privacy ledger: one append-only, hash-chained SQLite table of every privacy spend.

Write-ahead: a round's spend is committed (``synchronous=FULL``) before training starts and so before
the update leaves the hospital; a crash can over-count but never under-count. The check against the
cap and the write happen in ONE write transaction, so concurrent writers (two runs, two processes on
one ledger) are serialised and can never overspend.

Each row commits to the previous one (``row_hash = sha256(prev_hash || row)``): a run keeps the
``(rows, head)`` its hospitals reported, so a ledger that is deleted, emptied, rolled back or
rewritten no longer holds that head and is refused (``verify_anchor``). Without an anchor the chain
still exposes edits that did not recompute every later hash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from fedmeta.errors import FedMetaError
from fedmeta.privacy.accounting import Mechanism

__all__ = ["LedgerRow", "PrivacyLedger", "LedgerError", "LedgerTransaction", "GENESIS", "TRIGGERS",
           "chain_problems", "row_hash", "verify_anchor"]

GENESIS = "0" * 64

TRIGGERS = {
    "spend_no_update": "CREATE TRIGGER spend_no_update BEFORE UPDATE ON spend\n"
                       "BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END",
    "spend_no_delete": "CREATE TRIGGER spend_no_delete BEFORE DELETE ON spend\n"
                       "BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END",
}

_TABLE = """
CREATE TABLE spend (
    id            INTEGER PRIMARY KEY,
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
    recorded_at   TEXT    NOT NULL,
    prev_hash     TEXT    NOT NULL,
    row_hash      TEXT    NOT NULL
)"""


class LedgerError(FedMetaError):
    """The ledger cannot be trusted (broken chain, missing triggers, rolled back): nothing may train on it."""


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
    prev_hash: str
    row_hash: str

    @property
    def as_mechanism(self) -> Mechanism:
        return Mechanism(self.sigma, self.sample_rate, self.steps)


COLUMNS = tuple(f.name for f in fields(LedgerRow))
# What the caller gives for a spend; id, time and hashes are the ledger's.
SPEND_COLUMNS = tuple(c for c in COLUMNS if c not in ("id", "recorded_at", "prev_hash", "row_hash"))


def row_hash(values: dict[str, object]) -> str:
    """sha256 over the previous hash and the row's content (floats as their exact repr)."""
    content = json.dumps([values[c] for c in COLUMNS if c != "row_hash"], separators=(",", ":"))
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def chain_problems(rows: list[LedgerRow]) -> list[str]:
    """What is wrong with the chain: ids not 1..N, a row whose hash or link does not match."""
    problems = []
    prev = GENESIS
    for i, row in enumerate(rows, start=1):
        if row.id != i:
            problems.append(f"row ids are not contiguous: row {i} has id {row.id} (rows deleted or inserted)")
            break
        if row.prev_hash != prev:
            problems.append(f"row {row.id} does not link to row {row.id - 1} (rows deleted or replaced)")
            break
        if row_hash(vars(row)) != row.row_hash:
            problems.append(f"row {row.id} does not match its hash (edited after it was written)")
            break
        prev = row.row_hash
    return problems


def verify_anchor(rows: list[LedgerRow], anchor_rows: int, anchor_head: str, where: str) -> None:
    """The ledger still holds the row a run recorded as its head (it may have grown since)."""
    if anchor_rows <= 0:
        return
    if len(rows) < anchor_rows:
        raise LedgerError(f"{where}: has {len(rows)} row(s), but the run recorded {anchor_rows}: the ledger was "
                          "deleted, emptied or rolled back; its spent budget cannot be trusted")
    if rows[anchor_rows - 1].row_hash != anchor_head:
        raise LedgerError(f"{where}: row {anchor_rows} is not the one the run recorded: the ledger was "
                          "rewritten or replaced")


class LedgerTransaction:
    """The rows under the write lock, and appending new ones that extend the chain."""

    def __init__(self, db: sqlite3.Connection, rows: list[LedgerRow]):
        self._db, self.rows = db, rows

    def append(self, *spends: dict[str, object]) -> list[LedgerRow]:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        added = []
        for spend in spends:
            if set(spend) != set(SPEND_COLUMNS):
                raise ValueError(f"ledger row needs exactly the columns {SPEND_COLUMNS}")
            prev = self.rows[-1].row_hash if self.rows else GENESIS
            values = {**spend, "id": len(self.rows) + 1, "recorded_at": now, "prev_hash": prev}
            values["row_hash"] = row_hash(values)
            row = LedgerRow(**{c: values[c] for c in COLUMNS})  # type: ignore[arg-type]
            self._db.execute(f"INSERT INTO spend ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             tuple(values[c] for c in COLUMNS))
            self.rows.append(row)
            added.append(row)
        return added


def _read(db: sqlite3.Connection) -> list[LedgerRow]:
    cur = db.execute(f"SELECT {', '.join(COLUMNS)} FROM spend ORDER BY id")
    return [LedgerRow(*r) for r in cur.fetchall()]


def _triggers(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'spend'"))


def structure_problems(db: sqlite3.Connection) -> list[str]:
    """Missing or altered append-only triggers, a table without the hash chain."""
    columns = [r[1] for r in db.execute("PRAGMA table_info(spend)")]
    if not columns:
        return ["it has no spend table (not a privacy ledger)"]
    if tuple(columns) != COLUMNS:
        return [f"its spend table has columns {columns}, expected {list(COLUMNS)} (another fedmeta version, or altered)"]
    found = _triggers(db)
    return [f"trigger {name} was dropped or altered (the ledger is no longer append-only)"
            for name, sql in TRIGGERS.items() if found.get(name) != sql]


LOCK_WAIT_S = 300.0  # how long a hospital's process waits for another one holding its ledger


def _write_ahead_logging(db: sqlite3.Connection, path: Path) -> None:
    """Switch the ledger to WAL. Two processes opening a new ledger at once can deadlock on the
    switch, and SQLite then answers one of them "locked" at once, without its busy wait: retry, as
    long as a transaction would wait."""
    deadline, pause = time.monotonic() + LOCK_WAIT_S, 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise LedgerError(f"{path}: cannot open the privacy ledger: {err}") from None
            time.sleep(pause)
            pause = min(0.2, 2 * pause)


class PrivacyLedger:
    """The ledger file of one hospital."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=LOCK_WAIT_S)
        except (OSError, sqlite3.Error) as err:
            raise LedgerError(f"{self.path}: cannot open the privacy ledger: {err}") from None
        try:
            _write_ahead_logging(db, self.path)
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """The whole ledger under SQLite's write lock, its structure and chain verified; commits on
        a normal exit, rolls back on an exception. A new file gets the table and its triggers."""
        with self._connect() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'spend'").fetchone():
                    db.execute(_TABLE)
                    for sql in TRIGGERS.values():
                        db.execute(sql)
                problems = structure_problems(db)
                rows = _read(db) if not problems else []
                problems = problems or chain_problems(rows)
                if problems:
                    raise LedgerError(f"{self.path}: {problems[0]}")
                yield LedgerTransaction(db, rows)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def rows(self) -> list[LedgerRow]:
        """The verified rows (raises ``LedgerError`` on a broken ledger)."""
        with self.transaction() as txn:
            return list(txn.rows)

    def history(self) -> list[Mechanism]:
        return [r.as_mechanism for r in self.rows()]

    @staticmethod
    def read_only(path: str | Path) -> list[LedgerRow]:
        """The rows of an existing ledger, opened read-only and unverified (an auditor must not write)."""
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            return _read(db)
        finally:
            db.close()
