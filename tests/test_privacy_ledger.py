"""The privacy ledger: append-only, durable across processes, and the accountant's memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedmeta.config import load_config
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.budget import HospitalBudget
from fedmeta.privacy.ledger import PrivacyLedger

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"


def _row(ledger: PrivacyLedger, round: int, eps: float) -> None:
    ledger.record(dict(run_id="r1", round=round, hospital="h", algorithm="maml", mechanism="record:episode-clipping",
                       sigma=1.0, sample_rate=0.1, steps=2, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                       epsilon=eps, max_epsilon=10.0))


def test_rows_cannot_be_changed_or_removed(tmp_path):
    ledger = PrivacyLedger(tmp_path / "h.sqlite")
    _row(ledger, 1, 0.5)
    db = sqlite3.connect(tmp_path / "h.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE spend SET epsilon = 0.0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM spend")
    db.close()
    assert [r.epsilon for r in ledger.rows()] == [0.5]


def test_a_restarted_hospital_resumes_its_accountant_from_the_ledger(tmp_path):
    cfg = load_config(CI, ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"'])
    path = tmp_path / "hospital-01.sqlite"
    first = HospitalBudget(cfg, hospital="hospital-01", n_train=100, ledger_path=path)
    d1 = first.decide()
    assert d1.allowed and d1.epsilon_before == 0.0
    assert first.commit(run_id="run-a", round=1) == pytest.approx(d1.epsilon_after)
    # A new process (new object, same file) continues from the spend on disk.
    again = HospitalBudget(cfg, hospital="hospital-01", n_train=100, ledger_path=path)
    d2 = again.decide()
    assert d2.epsilon_before == pytest.approx(d1.epsilon_after)
    assert d2.epsilon_after > d1.epsilon_after
    mech = again.ledger.history()
    assert d2.epsilon_before == pytest.approx(epsilon_of(mech, delta=again.plan.delta, accountant="rdp"))


def test_the_cap_comes_from_the_hospital(tmp_path):
    cfg = load_config(CI, ['privacy.mode="record"', "privacy.noise_multiplier=1.0", "privacy.max_epsilon=100.0"])
    budget = HospitalBudget(cfg, hospital="hospital-01", n_train=100, ledger_path=tmp_path / "a.sqlite",
                            max_epsilon=0.01)  # node config beats the run config
    decision = budget.decide()
    assert not decision.allowed and "declines to train" in decision.reason and "cap 0.01" in decision.reason


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
