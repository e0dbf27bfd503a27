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
