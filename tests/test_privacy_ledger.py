"""The privacy ledger: append-only, hash-chained, the accountant's memory, and refused once it was
rolled back, emptied, deleted or rewritten (even with every hash recomputed)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from fedmeta.config import load_config
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.budget import HospitalBudget
from fedmeta.privacy.ledger import LedgerError, PrivacyLedger
from fedmeta.privacy.plan import plan_privacy
from fedmeta.privacy.policy import negotiate, policy_from_node_config

from ledger_tamper import tamper

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"
RECORD = ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"']


def _budget(path: Path, *extra: str, n_train: int = 100) -> HospitalBudget:
    cfg = load_config(CI, [*RECORD, *extra])
    return HospitalBudget(plan_privacy(cfg, hospital="hospital-01", n_train=n_train), hospital="hospital-01",
                          algorithm="maml", ledger_path=path)


def test_rows_cannot_be_changed_or_removed(tmp_path):
    path = tmp_path / "h.sqlite"
    assert _budget(path).spend(run_id="r", round=1).allowed
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE spend SET epsilon = 0.0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM spend")
    db.close()
    assert len(PrivacyLedger(path).rows()) == 1


def test_a_restarted_hospital_resumes_its_accountant_from_the_ledger(tmp_path):
    path = tmp_path / "hospital-01.sqlite"
    d1 = _budget(path).spend(run_id="run-a", round=1)
    assert d1.allowed and d1.epsilon_before == 0.0 and d1.rows == 1
    # A new process (new object, same file) continues from the spend on disk.
    again = _budget(path)
    d2 = again.spend(run_id="run-a", round=2, anchor=(d1.rows, d1.head))
    assert d2.epsilon_before == pytest.approx(d1.epsilon_after) and d2.epsilon_after > d1.epsilon_after
    assert d2.epsilon_after == pytest.approx(epsilon_of(again.ledger.history(), delta=again.plan.delta,
                                                        accountant="rdp"))
    rows = again.ledger.rows()
    assert rows[1].prev_hash == rows[0].row_hash == d1.head and rows[1].row_hash == d2.head


def test_the_stricter_cap_wins_and_a_declined_round_writes_nothing(tmp_path):
    cfg = load_config(CI, [*RECORD, "privacy.max_epsilon=100.0"])
    plan = negotiate(policy_from_node_config({"max-epsilon": 0.01}), cfg, hospital="hospital-01", n_train=100)
    assert plan.max_epsilon == 0.01  # the node's cap beats the run's larger one ...
    budget = HospitalBudget(plan, hospital="hospital-01", algorithm="maml", ledger_path=tmp_path / "a.sqlite")
    decision = budget.spend(run_id="r", round=1)
    assert not decision.allowed and "declines to train" in decision.reason and "cap 0.01" in decision.reason
    assert budget.ledger.rows() == []
    cfg = load_config(CI, [*RECORD, "privacy.max_epsilon=0.5"])
    plan = negotiate(policy_from_node_config({"max-epsilon": 50}), cfg, hospital="hospital-01", n_train=100)
    assert plan.max_epsilon == 0.5  # ... and the run may lower it


@pytest.mark.parametrize("attack", ["delete", "empty", "roll back", "rewrite", "rewrite and rechain",
                                    "drop a row and rechain", "raise the cap and rechain", "drop the triggers"])
def test_a_ledger_that_lost_what_the_run_recorded_is_refused(tmp_path, attack):
    path = tmp_path / "h.sqlite"
    budget = _budget(path)
    first = budget.spend(run_id="r", round=1)
    backup = tmp_path / "backup.sqlite"
    shutil.copy(path, backup)
    second = budget.spend(run_id="r", round=2, anchor=(first.rows, first.head))
    anchor = (second.rows, second.head)
    edits = {
        "delete": lambda: path.unlink(),
        "empty": lambda: tamper(path, "DELETE FROM spend;"),
        "roll back": lambda: shutil.copy(backup, path),
        "rewrite": lambda: tamper(path, "UPDATE spend SET sigma = sigma * 3;"),
        "rewrite and rechain": lambda: tamper(path, "UPDATE spend SET sigma = sigma * 3;", recompute_epsilon=True,
                                              rechain=True),
        "drop a row and rechain": lambda: tamper(path, "DELETE FROM spend WHERE id = 1; UPDATE spend SET id = 1;",
                                                 recompute_epsilon=True, rechain=True),
        "raise the cap and rechain": lambda: tamper(path, "UPDATE spend SET max_epsilon = 1e9;", rechain=True),
        "drop the triggers": lambda: tamper(path, "", restore_triggers=False),
    }
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    edits[attack]()
    with pytest.raises(LedgerError) as err:
        _budget(path).spend(run_id="r", round=3, anchor=anchor)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_broken_chain_is_refused_even_without_an_anchor(tmp_path):
    path = tmp_path / "h.sqlite"
    budget = _budget(path)
    budget.spend(run_id="r", round=1)
    tamper(path, "UPDATE spend SET sigma = sigma * 3;")
    with pytest.raises(LedgerError, match="does not match its hash"):
        budget.spend(run_id="r", round=2)


def test_the_auditor_reads_without_writing(tmp_path):
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE unrelated (x INTEGER)")
    db.commit()
    db.close()
    before = other.read_bytes()
    with pytest.raises(sqlite3.DatabaseError):
        PrivacyLedger.read_only(other)
    assert other.read_bytes() == before
