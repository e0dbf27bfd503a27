"""What a tamperer does to a ledger file, for the tests that check it is caught."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedmeta.privacy.accounting import Mechanism, epsilon_of
from fedmeta.privacy.ledger import COLUMNS, GENESIS, TRIGGERS, row_hash


def tamper(path: Path, sql: str, *, recompute_epsilon: bool = False, rechain: bool = False,
           restore_triggers: bool = True) -> None:
    """Run ``sql`` with the append-only triggers dropped. A careful tamperer then makes the ledger
    agree with itself again: every epsilon recomputed with the accountant, every hash of the chain
    recomputed, the triggers put back."""
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript("DROP TRIGGER spend_no_update; DROP TRIGGER spend_no_delete;" + sql)
    rows = [dict(zip(COLUMNS, r)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM spend ORDER BY id")]
    prev = GENESIS
    for i, row in enumerate(rows):
        if recompute_epsilon:
            row["epsilon"] = epsilon_of([Mechanism(r["sigma"], r["sample_rate"], r["steps"]) for r in rows[: i + 1]],
                                        delta=row["delta"], accountant=row["accountant"])
        if rechain:
            row["prev_hash"] = prev
            row["row_hash"] = prev = row_hash(row)
        db.execute("UPDATE spend SET epsilon = ?, prev_hash = ?, row_hash = ? WHERE id = ?",
                   (row["epsilon"], row["prev_hash"], row["row_hash"], row["id"]))
    db.commit()
    if restore_triggers:
        for trigger in TRIGGERS.values():
            db.execute(trigger)
        db.commit()
    db.close()
