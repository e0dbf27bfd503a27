"""Two processes training one hospital on one ledger, racing: together they never pass its cap, and
every stored epsilon is the accountant's for the history before it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fedmeta.config import load_config
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.privacy.ledger_audit import audit_ledger
from fedmeta.privacy.plan import plan_privacy

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"
RECORD = ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"']
FIT = 4  # rounds that fit under the cap

SCRIPT = r"""
import sys, time
from pathlib import Path
from fedmeta.config import load_config
from fedmeta.privacy.budget import HospitalBudget
from fedmeta.privacy.plan import plan_privacy
ci, ledger, go, cap, name = sys.argv[1:6]
cfg = load_config(ci, ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"',
                       f"privacy.max_epsilon={cap}"])
budget = HospitalBudget(plan_privacy(cfg, hospital="hospital-01", n_train=100), hospital="hospital-01",
                        algorithm="maml", ledger_path=ledger)
while not Path(go).exists():
    time.sleep(0.001)
trained = 0
for r in range(1, 20):
    if not budget.spend(run_id=name, round=r).allowed:
        break
    trained += 1
    time.sleep(0.05)  # training, while the other process spends
print("TRAINED", trained)
"""


def test_two_processes_on_one_ledger_never_overspend(tmp_path):
    cfg = load_config(CI, RECORD)
    plan = plan_privacy(cfg, hospital="hospital-01", n_train=100)
    eps = [epsilon_of(plan.round_history() * r, delta=plan.delta, accountant="rdp") for r in (FIT, FIT + 1)]
    cap = (eps[0] + eps[1]) / 2
    ledger, go = tmp_path / "shared.sqlite", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(CI), str(ledger), str(go), repr(cap), f"run-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    time.sleep(8.0)  # both have imported fedmeta and wait on the start line
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    trained = [int(o[0].split("TRAINED")[1]) for o in outs]
    rows = PrivacyLedger(ledger).rows()
    assert sum(trained) == len(rows) == FIT
    assert rows[-1].epsilon <= cap
    report = audit_ledger(ledger)
    assert report.ok, report.problems


def test_a_ledger_answered_locked_at_its_switch_to_wal_is_retried_not_crashed(tmp_path, monkeypatch):
    """SQLite answers one of two processes opening a new ledger at once "locked" without waiting;
    the ledger retries the switch, and only after its lock wait does it give up, in one line."""
    import sqlite3

    import pytest

    from fedmeta.privacy import ledger as ledger_module

    real_connect, refusals = sqlite3.connect, [3]

    class Contended:
        def __init__(self, db: sqlite3.Connection):
            self._db = db

        def execute(self, sql: str, *args):
            if sql == "PRAGMA journal_mode=WAL" and refusals[0] > 0:
                refusals[0] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self._db.execute(sql, *args)

        def __getattr__(self, name: str):
            return getattr(self._db, name)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", lambda *a, **k: Contended(real_connect(*a, **k)))
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    assert ledger.rows() == [] and refusals == [0]  # opened after three refusals
    refusals[0] = 10**9
    monkeypatch.setattr(ledger_module, "LOCK_WAIT_S", 0.05)
    with pytest.raises(ledger_module.LedgerError, match="cannot open the privacy ledger: database is locked"):
        ledger.rows()
