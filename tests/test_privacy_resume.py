"""A private run's checkpoint keeps each hospital's reported (round, epsilon, ledger head): a run
resumed on ledgers that were deleted, emptied, rolled back or rewritten is refused before anything
starts, one that was not goes on; and in a simulation a hospital's own policy refuses a run in
another privacy mode, which the server records as a missed round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.flower.server import SimulatedCrash
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.simulation import simulate

from conftest import built_once
from ledger_tamper import tamper

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")
# hospital-05's own policy requires hospital-level DP: it refuses this record-level run.
DP = ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"', "federation.rounds=3",
      'privacy.hospitals={"hospital-05" = {mode = "client"}}']
SETS = sum([["--set", s] for s in DP], [])
TRAINING = [f"hospital-0{i}" for i in range(1, 5)]


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A private run killed after round 2 of 3: its checkpoint and its hospitals' ledgers."""
    def build(root: Path) -> None:
        with pytest.raises(SimulatedCrash):
            simulate(load_config(CI, DP), root / "run", progress=False, _stop_after_round=2)

    return built_once(tmp_path_factory, "killed-private-run", build) / "run"


TAMPER = {
    "deleted": (lambda p: p.unlink(), "is missing"),
    "emptied": (lambda p: tamper(p, "DELETE FROM spend;"), "deleted, emptied or rolled back"),
    "rolled back": (lambda p: tamper(p, "DELETE FROM spend WHERE id = 2;"), "deleted, emptied or rolled back"),
    "rewritten": (lambda p: tamper(p, "UPDATE spend SET sigma = sigma * 3;", recompute_epsilon=True, rechain=True),
                  "rewritten or replaced"),
}


@pytest.mark.parametrize("edit", list(TAMPER))
def test_resume_refuses_a_ledger_that_lost_the_recorded_spend(killed, tmp_path, capsys, edit):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    anchors = torch.load(run / "checkpoint.pt", weights_only=True)["history"]["ledgers"]
    assert set(anchors) == set(TRAINING) and anchors["hospital-03"]["rows"] == 2
    ledger = run / "ledgers" / "hospital-03.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    change, fragment = TAMPER[edit]
    change(ledger)
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


def test_a_simulated_hospital_policy_refuses_a_run_in_another_mode(killed):
    rounds = torch.load(killed / "checkpoint.pt", weights_only=True)["history"]["rounds"]
    first, second = rounds
    assert first["missed"]["hospital-05"]["kind"] == "refused"
    assert "requires client-level DP (privacy.hospitals.hospital-05)" in first["missed"]["hospital-05"]["reason"]
    assert sorted(first["train"]) == TRAINING and sorted(second["train"]) == TRAINING
    assert "hospital-05" not in second["sampled"]  # not asked again in this run
    assert not (killed / "ledgers" / "hospital-05.sqlite").exists()  # it spent nothing
