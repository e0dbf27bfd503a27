"""A private run's checkpoint keeps each hospital's reported (round, epsilon, ledger head): a run
resumed on ledgers that were deleted, emptied, rolled back or rewritten is refused before anything
starts, one that was not goes on; and in a simulation a hospital's own policy refuses a run that asks
for less, which the server records as a missed round."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.flower.server import SimulatedCrash
from fedmeta.privacy.ledger import COLUMNS, TRIGGERS, PrivacyLedger, row_hash
from fedmeta.simulation import simulate

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")
DP = ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"', "federation.rounds=3"]
SETS = sum([["--set", s] for s in DP], [])


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A private run killed after round 2 of 3: its checkpoint and its hospitals' ledgers."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.raises(SimulatedCrash):
        simulate(load_config(CI, DP), out, progress=False, _stop_after_round=2)
    return out


def _sql(path: Path, script: str) -> None:
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()


def _rewrite_and_rechain(path: Path) -> None:
    _sql(path, "DROP TRIGGER spend_no_update; UPDATE spend SET sigma = sigma * 3;")
    db = sqlite3.connect(path)
    prev = "0" * 64
    for row in db.execute(f"SELECT {', '.join(COLUMNS)} FROM spend ORDER BY id").fetchall():
        values = dict(zip(COLUMNS, row), prev_hash=prev)
        prev = row_hash(values)
        db.execute("UPDATE spend SET prev_hash = ?, row_hash = ? WHERE id = ?", (values["prev_hash"], prev, row[0]))
    db.commit()
    db.execute(TRIGGERS["spend_no_update"])
    db.commit()
    db.close()


TAMPER = {
    "deleted": (lambda p: p.unlink(), "is missing"),
    "emptied": (lambda p: _sql(p, "DROP TRIGGER spend_no_delete; DELETE FROM spend;" + TRIGGERS["spend_no_delete"]
                               + ";"), "deleted, emptied or rolled back"),
    "rolled back": (lambda p: _sql(p, "DROP TRIGGER spend_no_delete; DELETE FROM spend WHERE id = 2;"
                                   + TRIGGERS["spend_no_delete"] + ";"), "deleted, emptied or rolled back"),
    "rewritten": (_rewrite_and_rechain, "rewritten or replaced"),
}


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_resume_refuses_a_ledger_that_lost_the_recorded_spend(killed, tmp_path, capsys, tamper):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    anchors = torch.load(run / "checkpoint.pt", weights_only=True)["history"]["ledgers"]
    assert set(anchors) == {f"hospital-0{i}" for i in range(1, 6)} and anchors["hospital-03"]["rows"] == 2
    ledger = run / "ledgers" / "hospital-03.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    edit, fragment = TAMPER[tamper]
    edit(ledger)
    before = ledger.read_bytes() if ledger.exists() else b""
    assert main(["simulate", CI, *SETS, "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hospital hospital-03's ledger" in err and fragment in err, err
    assert not (run / "results.json").exists()
    assert (ledger.read_bytes() if ledger.exists() else b"") == before  # nothing trained on it


def test_resume_on_intact_ledgers_continues_the_spend(killed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    assert main(["simulate", CI, *SETS, "--resume", str(run), "--quiet"]) == 0
    res = json.loads((run / "results.json").read_text())
    for hospital, anchor in res["history"]["ledgers"].items():
        rows = PrivacyLedger(run / "ledgers" / f"{hospital}.sqlite").rows()
        assert [r.round for r in rows] == [1, 2, 3] and anchor["round"] == 3
        assert anchor["rows"] == 3 and anchor["head"] == rows[-1].row_hash and anchor["epsilon"] == rows[-1].epsilon
    ledgers = sorted(str(p) for p in (run / "ledgers").glob("*.sqlite"))
    assert main(["audit", *ledgers, "--run", str(run), "--out", str(tmp_path / "audit")]) == 0


def test_a_simulated_hospital_policy_refuses_a_non_private_run(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", CI, "--set", 'privacy.hospitals={"hospital-02" = {mode = "record"}}',
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    first, *later = res["history"]["rounds"]
    assert first["missed"]["hospital-02"]["kind"] == "refused"
    assert "requires record-level DP" in first["missed"]["hospital-02"]["reason"]
    assert "hospital-02" not in first["train"] and len(first["train"]) == 4
    assert all("hospital-02" not in r["sampled"] for r in later)  # not asked again in this run
    assert not (out / "ledgers").exists()
