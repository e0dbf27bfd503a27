"""Tasks: what the engine asks of the labels. The binary task against its definitions (BCE, AUC,
accuracy at 0.5, pairs) and the config's one-line refusal of an unknown kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.data.episodes import sample_k_shot
from fedmeta.tasks import BinaryTask, build_task

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
    assert m == {"auc": roc_auc_score(yv, p), "accuracy": 0.6} and task.pairs(yv) == 6


def test_a_k_shot_set_takes_shots_of_each_stratum():
    y = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=np.float32)
    idx = sample_k_shot(y, 3, np.random.default_rng(0), BinaryTask())
    assert len(set(idx.tolist())) == 6 and sorted(y[idx].tolist()) == [0, 0, 0, 1, 1, 1]


def test_an_unknown_task_is_one_line(capsys):
    assert main(["simulate", CI, "--set", "task.kind=\"astrology\""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "task.kind: unknown task (expected one of binary)" in err
