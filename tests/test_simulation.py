"""End to end on Flower's real simulation engine (Ray backend): hospitals as ClientApps, FedMeta as
the strategy, outputs on disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.compare import run_comparison
from fedmeta.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    # 5 hospitals, one held out: 4 train for 3 rounds, all 5 are evaluated.
    code = main(["simulate", CI, "--set", "data.held_out=['hospital-05']", "--out", str(out), "--quiet"])
    assert code == 0
    return out


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
        assert not r["failed"]
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
    assert (out / "comparison.md").read_text().count("| fedmeta-fomaml |") == 2
    assert (out / "runs" / "fedmeta-fomaml" / "seed1" / "results.json").is_file()


def test_leave_one_out_holds_each_hospital_out_in_turn(tmp_path):
    cfg = load_config(CI, ["data.leave_one_out=true"])
    result = run_comparison(cfg, ["local"], [0], tmp_path, run_federated=None)  # type: ignore[arg-type]
    hospitals = result["algorithms"]["local"]["seeds"]["0"]["hospitals"]
    assert set(hospitals) == {f"hospital-0{j}" for j in range(1, 6)}
    assert all(m["role"] == "held-out" for m in hospitals.values())
    assert result["mode"] == "leave-one-hospital-out"
