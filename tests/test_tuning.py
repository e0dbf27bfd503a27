"""``fedmeta tune`` and ``compare --tune``: a tiny study end to end, resumed; search spaces and
their narrowing; and the proof that tuning reads no test split and no evaluated hospital."""

from __future__ import annotations

import csv
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from fedmeta.cli import main
from fedmeta.compare import search_space
from fedmeta.config import load_config
from fedmeta.data.synthetic import generate_synthetic
from fedmeta.errors import FedMetaError
from fedmeta.ray_session import local_ray_cluster
from fedmeta.tuning.space import resolve_space

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")
VAL = "data.validation_fraction=0.25"
FAST_LOCAL = "tune.space={\"local.steps\" = [20, 100]}"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_tiny_tune_runs_end_to_end_writes_a_config_simulate_accepts_and_resumes(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", CI, "--algorithm", "local", "--trials", "2", "--set", VAL, "--set", FAST_LOCAL,
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "local trial 1/2: validation AUC" in err and "local trial 2/2" in err
    for name in ("best.toml", "trials.csv", "history.png", "tune.json", "study.db"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "tune.json").read_text())
    best = load_config(out / "best.toml")
    assert json.loads(best.to_json()) == summary["config"]
    for key, value in summary["best"]["settings"].items():  # the chosen values are in the config
        section, name = key.split(".")
        got = getattr(getattr(best, section), name)
        assert got == ([value] * len(got) if key == "model.hidden" else value)
    rows = _rows(out / "trials.csv")
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert max(float(r["validation_score"]) for r in rows) == summary["best"]["validation_score"]
    # Interrupted tunes continue: two more trials in the same study, the first two untouched, a trial the
    # stop cut short run again ...
    import optuna

    optuna.load_study(study_name="fedmeta-tune", storage=f"sqlite:///{out / 'study.db'}").ask()  # left running
    assert main(["tune", CI, "--algorithm", "local", "--trials", "4", "--set", VAL, "--set", FAST_LOCAL,
                 "--resume", str(out)]) == 0
    assert "2 of 4 trials already done" in capsys.readouterr().err
    again = _rows(out / "trials.csv")
    assert len(again) == 5 and again[:2] == rows and again[2]["error"] == "interrupted"
    # ... and the trials after the stop are those a tune never stopped runs: same candidates, same scores.
    whole = tmp_path / "whole"
    assert main(["tune", CI, "--algorithm", "local", "--trials", "4", "--set", VAL, "--set", FAST_LOCAL,
                 "--out", str(whole)]) == 0

    def _trials(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k not in ("trial", "seconds")} for r in rows if r["error"] != "interrupted"]

    assert _trials(again) == _trials(_rows(whole / "trials.csv"))
    assert (out / "best.toml").read_text() == (whole / "best.toml").read_text()
    # ... only with the same algorithm and config.
    assert main(["tune", CI, "--algorithm", "local", "--trials", "5", "--set", VAL, "--set", FAST_LOCAL,
                 "--set", "seed=3", "--resume", str(out)]) == 2
    assert "with another config" in capsys.readouterr().err


def test_search_spaces_are_declared_per_algorithm_and_a_config_narrows_or_fixes_them():
    cfg = load_config(CI, [VAL])
    params, fixed = resolve_space(search_space("fedmeta-maml"), cfg, "fedmeta-maml")
    keys = [p.key for p in params]
    assert {"meta.inner_lr", "meta.inner_steps", "meta.outer_lr", "meta.outer_steps", "meta.meta_batch",
            "server.optimizer", "server.lr", "server.weight_decay", "model.hidden"} == set(keys) and not fixed
    assert keys.count("server.lr") == 2  # one range per server optimizer
    assert {p.key for p in search_space("local")} == {"local.lr", "local.steps", "local.weight_decay", "model.hidden"}
    for metric in ("fedmeta-protonet", "fedmeta-matchingnet", "fedmeta-relationnet"):  # no inner loop to tune
        assert {p.key for p in search_space(metric)} == set(keys) - {"meta.inner_lr", "meta.inner_steps"}
    narrowed = load_config(CI, [VAL, "tune.space={\"meta.inner_lr\" = [0.05, 0.1], \"server.optimizer\" = \"sgd\"}"])
    params, fixed = resolve_space(search_space("fedavg"), narrowed, "fedavg")
    assert resolve_space(search_space("fedavg"), load_config(CI, [VAL, FAST_LOCAL]), "fedavg",
                         frozenset({"local.steps"}))[1] == {}  # another algorithm's key: ignored here
    inner = next(p for p in params if p.key == "meta.inner_lr")
    assert (inner.low, inner.high) == (0.05, 0.1) and fixed == {"server.optimizer": "sgd"}
    assert [p.only_if for p in params if p.key == "server.lr"] == [("server.optimizer", "sgd"),
                                                                   ("server.optimizer", "adam")]
    # A model without hidden layers has no width to tune; unknown or malformed entries are one line.
    linear = load_config(CI, [VAL, "model.hidden=[]"])
    assert "model.hidden" not in {p.key for p in resolve_space(search_space("local"), linear, "local")[0]}
    # A conv net's width is its channel count: a hidden-layer width would change nothing it trains.
    images = load_config(str(ROOT / "configs" / "images.toml"), ["tune.space={\"model.width\" = [16, 32]}"])
    for name in ("fedavg", "local"):
        width = [p for p in resolve_space(search_space(name), images, name)[0] if p.key.startswith("model.")]
        assert [(p.key, p.choices) for p in width] == [("model.width", (16, 32))]
    for space, message in (("{\"meta.inner_lr\" = [0.1]}", "expected a value or \\[low, high\\]"),
                           ("{\"local.nope\" = 0.1}", "not in fedavg's search space")):
        with pytest.raises(FedMetaError, match=message):
            resolve_space(search_space("fedavg"), load_config(CI, [VAL, f"tune.space={space}"]), "fedavg")


def test_validation_draws_score_a_trial_by_their_mean_and_the_best_config_refits(tmp_path):
    from fedmeta.compare import BASELINES, counted
    from fedmeta.config import with_settings
    from fedmeta.data.sources import load_federation
    from fedmeta.history import validation_score
    from fedmeta.tuning.protocol import tuning_config

    out = tmp_path / "tune"
    assert main(["tune", CI, "--algorithm", "local", "--trials", "2", "--set", VAL, "--set", FAST_LOCAL,
                 "--set", "tune.validation_draws=2", "--out", str(out), "--quiet"]) == 0
    cfg = load_config(CI, [VAL, FAST_LOCAL, "tune.validation_draws=2"])
    for row in _rows(out / "trials.csv"):
        settings = {k: (int(row[k]) if k in ("local.steps", "model.hidden") else float(row[k]))
                    for k in ("local.lr", "local.steps", "local.weight_decay", "model.hidden")}
        per_draw, pairs = [], []
        for draw in (0, 1):
            trial_cfg = with_settings(tuning_config(cfg, draw), settings, "test")
            rows = counted(BASELINES["local"](load_federation(trial_cfg), trial_cfg))
            per_draw.append(validation_score(list(rows.values())))
            pairs.append(sum(r["val_pairs"] for r in rows.values()))
        assert per_draw[0] != per_draw[1]
        expected = (per_draw[0] * pairs[0] + per_draw[1] * pairs[1]) / sum(pairs)  # pair-weighted
        assert float(row["validation_score"]) == pytest.approx(expected, abs=1e-12)
    # The chosen config trains on the whole train split; tune.refit = false keeps the validation part.
    assert load_config(out / "best.toml").data.validation_fraction == 0
    kept = tmp_path / "kept"
    assert main(["tune", CI, "--algorithm", "local", "--trials", "1", "--set", VAL, "--set", FAST_LOCAL,
                 "--set", "tune.refit=false", "--out", str(kept), "--quiet"]) == 0
    assert load_config(kept / "best.toml").data.validation_fraction == 0.25


def test_the_validation_draws_of_an_unseen_hospital_mode_take_their_stand_ins_in_turn():
    from fedmeta.tuning.protocol import mean_curve, tuning_config

    cfg = load_config(CI, [VAL, "data.held_out=[\"hospital-05\"]"])
    drawn = [tuning_config(cfg, draw).data for draw in range(6)]
    assert all(d.excluded == ["hospital-05"] and "hospital-05" not in d.held_out for d in drawn)
    assert [d.validation_draw for d in drawn] == list(range(6))
    # Four training hospitals, one stand-in per draw: four draws judge on four different hospitals.
    assert len({d.held_out[0] for d in drawn[:4]}) == 4 and drawn[4].held_out == drawn[0].held_out
    two = [tuning_config(load_config(CI, [VAL, "data.held_out=[\"hospital-05\"]", "tune.validation_hospitals=2"]),
                         draw).data.held_out for draw in range(2)]
    assert len(set(two[0]) | set(two[1])) == 4
    # Draws count by the pairs their scores compared.
    assert mean_curve([{1: 0.9, 2: 0.5}, {1: 0.5, 2: 0.8}], [300, 100]) == (pytest.approx(0.8), 1)
    assert mean_curve([{1: 0.9, 2: 0.5}, {1: 0.5, 2: 0.8}]) == (pytest.approx(0.7), 1)


def _write_csvs(directory: Path, *, garbage: bool) -> None:
    """ci.toml's synthetic hospitals as CSV files. ``garbage``: every hospital's test rows get noise
    for features (the split depends only on the labels, which stay) and hospital-05, the evaluated
    one, gets noise for everything."""
    cfg = load_config(CI)
    rng = np.random.default_rng(99)
    directory.mkdir()
    for site in generate_synthetic(cfg.data.synthetic, cfg.seed):
        x, y = site.x.copy(), site.y.copy()
        if garbage:
            test = train_test_split(np.arange(len(y)), test_size=cfg.data.test_fraction, stratify=y,
                                    random_state=cfg.seed)[1]
            x[test] = rng.normal(size=(len(test), x.shape[1])) * 50
            if site.name == "hospital-05":
                x, y = rng.normal(size=x.shape), rng.permutation(y)
        with (directory / f"{site.name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([*(f"x{i}" for i in range(x.shape[1])), "label"])
            w.writerows([*map(repr, map(float, row)), str(int(label))] for row, label in zip(x, y, strict=True))


@pytest.mark.parametrize("algorithm", ["local", "fedavg"])
def test_tuning_reads_no_test_split_and_no_evaluated_hospital(tmp_path, algorithm):
    results = []
    # Both tunes on one Ray cluster; a federated trial costs seconds, so it gets one trial.
    with local_ray_cluster() if algorithm == "fedavg" else nullcontext("") as address:
        for garbage in (False, True):
            data, out = tmp_path / f"data-{garbage}", tmp_path / f"tune-{garbage}"
            _write_csvs(data, garbage=garbage)
            args = ["tune", CI, "--algorithm", algorithm, "--trials", "2" if algorithm == "local" else "1",
                    "--data-dir", str(data), "--out", str(out), "--set", "data.source=\"csv\"", "--set", VAL,
                    "--set", "data.held_out=[\"hospital-05\"]", "--set", "federation.rounds=2", "--quiet",
                    *(["--set", FAST_LOCAL] if algorithm == "local" else ["--ray-address", address])]
            assert main(args) == 0
            results.append((_rows(out / "trials.csv"), (out / "best.toml").read_text().replace(str(data), "DIR")))
    (rows, best), (garbage_rows, garbage_best) = results
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == \
           [{k: v for k, v in r.items() if k not in drop} for r in garbage_rows]
    assert best == garbage_best
    # The trials validated on a training hospital standing in for the evaluated one, which they left out.
    if algorithm == "fedavg":
        trial = json.loads((tmp_path / "tune-True" / "trials" / "0000" / "results.json").read_text())
        assert "hospital-05" not in trial["history"]["hospitals"]
        assert list(trial["history"]["hospitals"].values()).count("held-out") == 1


def test_compare_tune_tunes_each_algorithm_and_seed_then_runs_its_best_config(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", CI, "--algorithms", "local", "fedavg", "--seeds", "0", "--tune", "2", "--set", VAL,
                 "--set", "federation.rounds=2", "--set", FAST_LOCAL, "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert result["tuning_trials"] == 2
    for algo in ("local", "fedavg"):
        tuned = result["algorithms"][algo]["tuning"]["seed0"]
        assert tuned["completed"] + tuned["pruned"] + tuned["failed"] == 2
        best = load_config(out / "tuning" / algo / "seed0" / "best.toml")
        assert json.loads(best.to_json())["local" if algo == "local" else "meta"] == \
            json.loads((out / "tuning" / algo / "seed0" / "tune.json").read_text())["config"][
                "local" if algo == "local" else "meta"]
    run = json.loads((out / "runs" / "fedavg" / "seed0" / "results.json").read_text())
    best = load_config(out / "tuning" / "fedavg" / "seed0" / "best.toml")
    assert run["config"]["meta"] == {**json.loads(best.to_json())["meta"], "algorithm": "fedavg"}
    assert run["config"]["eval"]["split"] == "test"  # the final runs report test; the trials never did
    assert "Tuned on validation only (2 trials" in (out / "comparison.md").read_text()
