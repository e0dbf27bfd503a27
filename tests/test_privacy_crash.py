"""Crash safety: a hospital process killed (SIGKILL) after its ledger write (before training, so
before any reply) still has that round counted, and a restarted hospital resumes from the ledger."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"

SCRIPT = r"""
import json, os, signal, sys
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedmeta.config import load_config
from fedmeta.flower.client import build_client_app
from fedmeta.flower.records import params_to_record
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.privacy import budget

config, ledger_dir, crash, round_ = sys.argv[1], sys.argv[2], sys.argv[3] == "crash", int(sys.argv[4])
if crash:
    spend = budget.HospitalBudget.spend
    def spend_then_die(self, **kw):
        decision = spend(self, **kw)
        assert decision.allowed
        os.kill(os.getpid(), signal.SIGKILL)  # after the write-ahead, before any reply exists
    budget.HospitalBudget.spend = spend_then_die
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
cfg = load_config(config, ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"'])
app = build_client_app(cfg, ledger_dir=__import__("pathlib").Path(ledger_dir))
params = params_of(build_model(cfg.model, (8,), cfg.seed))
msg = Message(RecordDict({"arrays": params_to_record(params), "config": ConfigRecord({"server-round": round_})}),
              dst_node_id=7, message_type=MessageType.TRAIN)
ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 5}, state=RecordDict(),
              run_config={})
reply = app(msg, ctx)
print("REPLY " + json.dumps({"epsilon": reply.content["metrics"]["epsilon"]}))
"""


def _run(tmp_path: Path, crash: bool, round_: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(CI), str(tmp_path), "crash" if crash else "ok",
                           str(round_)], capture_output=True, text=True, timeout=180)


def test_sigkill_after_the_ledger_write_still_counts_the_round(tmp_path):
    killed = _run(tmp_path, crash=True, round_=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "REPLY" not in killed.stdout  # the update never left
    ledger = PrivacyLedger(tmp_path / "hospital-01.sqlite")
    rows = ledger.rows()
    assert len(rows) == 1 and rows[0].round == 1 and rows[0].epsilon > 0

    restarted = _run(tmp_path, crash=False, round_=2)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    reported = json.loads(restarted.stdout.split("REPLY ", 1)[1])["epsilon"]
    rows = ledger.rows()
    assert [r.round for r in rows] == [1, 2]
    # The restarted hospital counted the killed round: two rounds of spend, not one.
    two_rounds = epsilon_of(ledger.history(), delta=rows[1].delta, accountant="rdp")
    assert reported == pytest.approx(two_rounds) and reported > rows[0].epsilon
