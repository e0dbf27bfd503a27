"""End to end on Flower's real simulation engine (Ray backend): hospitals as ClientApps, FedMeta as
the strategy, outputs on disk."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.compare import run_comparison
from fedmeta.config import load_config
from fedmeta.flower.server import SimulatedCrash
from fedmeta.output_dir import CLAIM
from fedmeta.simulation import simulate

from conftest import built_once

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    def build(root: Path) -> None:
        # 5 hospitals, one held out: 4 train for 3 rounds, all 5 are evaluated.
        code = main(["simulate", CI, "--set", "data.held_out=['hospital-05']", "--out", str(root / "run"), "--quiet"])
        assert code == 0

    return built_once(tmp_path_factory, "simulated", build) / "run"


def test_simulation_writes_every_output(simulated):
    for name in ("config.json", "results.json", "metrics.csv", "model.pt", "checkpoint.pt",
                 "auc_per_round.png", "accuracy_per_round.png"):
        assert (simulated / name).is_file(), name
    cfg = load_config(CI, ["data.held_out=['hospital-05']"])
    assert json.loads((simulated / "config.json").read_text()) == json.loads(cfg.to_json())


def test_every_round_trains_the_participants_and_never_the_held_out_hospital(simulated):
    res = json.loads((simulated / "results.json").read_text())
    rounds = res["history"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    train_sites = {f"hospital-0{i}" for i in range(1, 5)}
    for r in rounds:
        assert set(r["train"]) == train_sites
        assert not r["missed"] and r["replied"] == r["sampled"] and r["aggregated"]
        assert set(r["eval"]) == train_sites | {"hospital-05"}
        for m in r["train"].values():
            assert m["on-gpu"] == float(torch.cuda.is_available())
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert set(res["history"]["devices"].values()) == {expected_device}
    assert res["final"]["hospital-05"]["role"] == "held-out"
    assert set(res["summary"]) == {"train", "held-out"}
    for m in res["final"].values():
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0


def test_metrics_csv_and_model_match_results(simulated):
    res = json.loads((simulated / "results.json").read_text())
    rows = list(csv.DictReader((simulated / "metrics.csv").open()))
    last = {r["hospital"]: float(r["auc"]) for r in rows if r["round"] == "3"}
    assert last == pytest.approx({h: m["auc"] for h, m in res["final"].items()})
    state = torch.load(simulated / "model.pt")
    ckpt = torch.load(simulated / "checkpoint.pt")
    assert ckpt["round"] == 3
    for k, v in state.items():
        torch.testing.assert_close(v, ckpt["server"]["params"][k])


def test_a_killed_run_resumed_from_its_checkpoint_ends_with_the_uninterrupted_model(simulated, tmp_path):
    held_out = "data.held_out=['hospital-05']"
    # A `fedmeta simulate --out RUN` killed (SIGKILL) after round 1 leaves RUN with its checkpoint
    # and the claim of its dead process.
    out = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        simulate(load_config(CI, [held_out]), out, progress=False, _stop_after_round=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / CLAIM).write_text(f"{dead.pid}\n")
    assert torch.load(out / "checkpoint.pt")["round"] == 1 and not (out / "results.json").exists()
    assert main(["simulate", CI, "--set", held_out, "--resume", str(out), "--quiet"]) == 0
    assert not (out / CLAIM).exists()
    resumed, whole = (json.loads((d / "results.json").read_text()) for d in (out, simulated))
    assert resumed["resumed_from_round"] == 1 and resumed["rounds_completed"] == 3
    for a, b in zip(resumed["history"]["rounds"], whole["history"]["rounds"], strict=True):
        for key in ("round", "sampled", "replied", "missed", "eval"):
            assert a[key] == b[key], key
        assert {h: m["train-loss"] for h, m in a["train"].items()} == {h: m["train-loss"] for h, m in b["train"].items()}
    model, reference = torch.load(out / "model.pt"), torch.load(simulated / "model.pt")
    assert all(torch.equal(model[k], reference[k]) for k in reference)  # bit for bit


def test_resume_refuses_what_it_cannot_continue_in_one_line(simulated, tmp_path, capsys):
    assert main(["simulate", CI, "--resume", str(tmp_path / "none"), "--quiet"]) == 2
    assert main(["simulate", CI, "--set", "data.held_out=['hospital-05']", "--resume", str(simulated)]) == 2
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes((simulated / "checkpoint.pt").read_bytes())
    assert main(["simulate", CI, "--set", "meta.inner_lr=0.2", "--set", "data.held_out=['hospital-05']",
                 "--resume", str(copy), "--quiet"]) == 2
    (copy / CLAIM).write_text(f"{os.getppid()}\n")  # a live process still runs it
    assert main(["simulate", CI, "--set", "data.held_out=['hospital-05']", "--resume", str(copy)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[:-1] == [
        f"fedmeta: error: --resume {tmp_path / 'none'}: no checkpoint.pt there; nothing to resume",
        f"fedmeta: error: --resume {simulated}: that run finished (results.json exists); nothing to resume",
        f"fedmeta: error: {copy / 'checkpoint.pt'}: the config differs from the checkpointed run's in "
        "meta.inner_lr (checkpoint 0.1, now 0.2); resume with the same config",
    ]
    assert lines[-1].startswith(f"fedmeta: error: --resume {copy}: the run is still going on (pid {os.getppid()})")
    assert (copy / "checkpoint.pt").is_file() and (copy / CLAIM).is_file()  # a refused resume changes nothing


def test_compare_runs_algorithms_and_seeds_on_the_same_federation(tmp_path):
    out = tmp_path / "cmp"
    code = main(["compare", CI, "--algorithms", "local", "fedmeta-fomaml", "--seeds", "0", "1",
                 "--set", "federation.rounds=2", "--out", str(out), "--quiet"])
    assert code == 0
    result = json.loads((out / "comparison.json").read_text())
    assert set(result["algorithms"]) == {"local", "fedmeta-fomaml"}
    for algo in result["algorithms"].values():
        assert set(algo["seeds"]) == {"0", "1"}
        for seed in algo["seeds"].values():
            assert len(seed["hospitals"]) == 5
            assert seed["worst_auc"] == min(h["auc"] for h in seed["hospitals"].values())
    paired = result["algorithms"]["fedmeta-fomaml"]["paired"]  # no fedavg here: paired with the first
    assert paired["reference"] == "local" and paired["mean_auc"]["seeds"] == 2
    assert paired["mean_auc"]["low"] <= paired["mean_auc"]["mean"] <= paired["mean_auc"]["high"]
    assert (out / "comparison.md").read_text().count("| fedmeta-fomaml |") == 3
    assert (out / "runs" / "fedmeta-fomaml" / "seed1" / "results.json").is_file()


def test_leave_one_out_holds_each_hospital_out_in_turn(tmp_path):
    cfg = load_config(CI, ["data.leave_one_out=true"])
    result = run_comparison(cfg, ["local"], [0], tmp_path, run_federated=None)  # type: ignore[arg-type]
    hospitals = result["algorithms"]["local"]["seeds"]["0"]["hospitals"]
    assert set(hospitals) == {f"hospital-0{j}" for j in range(1, 6)}
    assert all(m["role"] == "held-out" for m in hospitals.values())
    assert result["mode"] == "leave-one-hospital-out"


def test_flower_sends_no_usage_events_even_when_imported_before_fedmeta(monkeypatch):
    """Flower reads FLWR_TELEMETRY_ENABLED once, at import: a script that imports flwr first still
    gets it off, unless the user set it."""
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    code = ("import flwr.supercore.telemetry as t; from fedmeta.simulation import _quiet_flower; "
            "_quiet_flower(); print(t.FLWR_TELEMETRY_ENABLED)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"

    import flwr.supercore.telemetry as telemetry

    from fedmeta.simulation import _quiet_flower

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")  # the user's choice is kept
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")
    _quiet_flower()
    assert telemetry.FLWR_TELEMETRY_ENABLED == "1"
