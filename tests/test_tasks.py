"""Tasks: what the engine asks of the labels. The binary task against its definitions (BCE, AUC,
accuracy at 0.5, pairs) and the config's one-line refusal of an unknown kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.data.episodes import sample_k_shot
from fedmeta.tasks import BinaryTask, MulticlassTask, build_task
from fedmeta.tasks.binary import auc

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


def test_the_binary_task_is_bce_on_a_logit_and_auc_on_its_sigmoid():
    task = build_task(load_config(CI).task)
    assert isinstance(task, BinaryTask) and task.primary == "auc"
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 7, generator=gen), (torch.rand(3, 7, generator=gen) > 0.5).float()
    by_hand = -(y * torch.log(torch.sigmoid(logits)) + (1 - y) * torch.log(1 - torch.sigmoid(logits)))
    torch.testing.assert_close(task.episode_losses(logits, y), by_hand.mean(-1))
    weight = torch.tensor([[1.0] * 7, [1.0] * 3 + [0.0] * 4, [0.0] * 7])
    torch.testing.assert_close(task.episode_losses(logits, y, weight, 5.0), (by_hand * weight).sum(-1) / 5.0)
    with pytest.raises(ValueError, match="normaliser"):
        task.episode_losses(logits, y, weight)
    yv, p = np.array([0, 0, 1, 1, 1]), np.array([0.2, 0.6, 0.4, 0.7, 0.9])
    m = task.metrics(yv, p)
    # Brier: mean squared error of the probabilities; ECE: each prediction alone in its bin here,
    # so the mean |label - probability|.
    assert m == {"auc": pytest.approx(roc_auc_score(yv, p), abs=1e-12), "accuracy": 0.6,
                 "brier": pytest.approx(brier_score_loss(yv, p)), "ece": pytest.approx(0.36)} and task.pairs(yv) == 6


@pytest.mark.parametrize("seed", range(5))
def test_the_auc_is_scikit_learns_with_ties_and_imbalance(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(float)
    y[:2] = [0.0, 1.0]  # both classes
    p = np.round(rng.random(n), int(rng.integers(1, 4)))  # coarse scores: many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auc(np.ones(4), p[:4])


def test_a_k_shot_set_takes_shots_of_each_stratum():
    y = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=np.float32)
    idx = sample_k_shot(y, 3, np.random.default_rng(0), BinaryTask())
    assert len(set(idx.tolist())) == 6 and sorted(y[idx].tolist()) == [0, 0, 0, 1, 1, 1]


def test_an_unknown_task_is_one_line(capsys):
    assert main(["simulate", CI, "--set", "task.kind=\"astrology\""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "task.kind: unknown task (expected one of binary, multiclass, survival)" in err


def test_the_multiclass_task_is_cross_entropy_and_macro_one_vs_rest_auc():
    task = build_task(load_config(CI, ["task.kind=\"multiclass\"", "task.classes=3"]).task)
    assert isinstance(task, MulticlassTask) and task.n_outputs == task.n_strata == 3
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(2, 6, 3, generator=gen), torch.randint(0, 3, (2, 6), generator=gen).float()
    log_p = logits - torch.logsumexp(logits, -1, keepdim=True)
    by_hand = -log_p.gather(-1, y.long()[..., None])[..., 0]
    torch.testing.assert_close(task.episode_losses(logits, y), by_hand.mean(-1))
    yv = np.array([0, 1, 2, 2, 1, 0, 2])
    p = torch.softmax(torch.randn(7, 3, generator=gen), -1).numpy().astype(np.float64)
    m = task.metrics(yv, p)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(yv, p, multi_class="ovr", average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yv, p.argmax(1)))
    assert task.pairs(yv) == 2 * 5 + 2 * 5 + 3 * 4
    # A class missing from a split: the macro mean runs over the classes it holds.
    two = np.array([0, 0, 1, 1])
    assert task.metrics(two, p[:4])["macro_auc"] == pytest.approx(
        np.mean([roc_auc_score(two == c, p[:4, c]) for c in (0, 1)]))
    assert task.label_error(2.0) is None and "0..2" in task.label_error(3.0) and task.label_error(1.5)


def test_a_multiclass_task_needs_its_classes_and_labelled_data(capsys):
    assert main(["simulate", CI, "--set", "task.kind=\"multiclass\""]) == 2
    assert "task.classes >= 2" in capsys.readouterr().err
    assert main(["simulate", CI, "--set", "task.kind=\"multiclass\"", "--set", "task.classes=3"]) == 2
    assert "the synthetic source generates a binary label" in capsys.readouterr().err


def _three_class_csvs(directory: Path, bad: str = "") -> None:
    rng = np.random.default_rng(0)
    directory.mkdir()
    for site, n in (("north", 150), ("south", 120), ("east", 90)):
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 4)) + np.eye(3, 4)[y] * 1.5
        rows = [",".join([*(f"{v:.4f}" for v in row), str(int(c))]) for row, c in zip(x, y, strict=True)]
        if bad and site == "south":
            rows[4] = rows[4].rsplit(",", 1)[0] + "," + bad
        (directory / f"{site}.csv").write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")


def test_a_three_class_federation_runs_end_to_end_on_its_primary_metric(tmp_path, capsys):
    data = tmp_path / "data"
    _three_class_csvs(data)
    common = [CI, "--data-dir", str(data), "--set", "data.source=\"csv\"", "--set", "task.kind=\"multiclass\"",
              "--set", "task.classes=3", "--set", "federation.rounds=2", "--set", "meta.shots=2",
              "--set", "eval.shots=2", "--quiet"]
    assert main(["simulate", *common, "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"] == ["macro_auc", "balanced_accuracy", "accuracy"]
    assert set(results["final"]) == {"north", "south", "east"}
    assert all(0 <= m["macro_auc"] <= 1 for m in results["final"].values())
    assert "mean_macro_auc" in results["summary"]["train"] and (tmp_path / "run" / "macro_auc_per_round.png").is_file()
    assert "mean macro AUC" in capsys.readouterr().out
    # A fourth site onboards with the run's model: per-class AUC and recall in its report.
    _three_class_csvs(tmp_path / "new")
    (tmp_path / "new" / "north.csv").rename(tmp_path / "west.csv")
    assert main(["onboard", str(tmp_path / "run"), "--data", str(tmp_path / "west.csv"), "--out",
                 str(tmp_path / "ob"), "--bootstrap", "20"]) == 0
    rep = json.loads((tmp_path / "ob" / "report.json").read_text())
    assert {f"{k}_class_{c}" for k in ("auc", "recall") for c in range(3)} <= set(rep["models"]["adapted"])
    assert rep["hospital"]["adapted_on"] == 6 and "Per class" in (tmp_path / "ob" / "report.html").read_text()
    bad = tmp_path / "bad"
    _three_class_csvs(bad, bad="3")
    assert main(["simulate", *common[:2], str(bad), *common[3:], "--out", str(tmp_path / "badrun")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "south.csv: line 6, column 'label': label must be a class 0..2" in err
    assert not (tmp_path / "badrun").exists()
