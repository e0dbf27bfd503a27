"""The ``pooled`` baseline: one model trained centrally on the union of the training hospitals'
train splits — the reference federated-learning papers report. It is NOT federated (the data would
have to leave the hospitals); it bounds what sharing could give.

Each hospital is then scored as the federated methods are: the pooled model adapted on k shots per
class of its own train split (the same draws, inner steps and rate; with ``eval.adapt_on = "all"`` a
participating hospital adapts on its whole train split), so the table compares starting points, not
protocols. A held-out hospital's data never enters the pool.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmeta.config import ExperimentConfig
from fedmeta.data.hospital import Federation
from fedmeta.evaluation import evaluate_few_shot, scored_splits, scores_row
from fedmeta.local_baseline import train_alone
from fedmeta.models import build_model, pick_device
from fedmeta.tuning.space import LOCAL_SPACE, Param, SearchSpace
from fedmeta.tasks import build_task

__all__ = ["pooled_params", "run_pooled_baseline"]


# The centralised fit's settings, and each hospital's adaptation of the pooled model.
SEARCH_SPACE: SearchSpace = (*LOCAL_SPACE, Param("meta.inner_lr", 0.01, 1.0, log=True),
                             Param("meta.inner_steps", 1, 10, integer=True))


def pooled_params(fed: Federation, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The ``local`` trainer (same model, initialisation and settings) on the pooled train splits."""
    held = set(cfg.data.held_out)
    pool = [h for h in fed.hospitals if h.name not in held]
    x = np.concatenate([h.x_train for h in pool])
    y = np.concatenate([h.y_train for h in pool])
    model = build_model(cfg.model, fed.input_shape, cfg.seed, build_task(cfg.task).n_outputs).to(pick_device())
    return train_alone(model, x, y, cfg, np.random.default_rng([cfg.seed, 104_729]))


def run_pooled_baseline(fed: Federation, cfg: ExperimentConfig) -> dict[str, dict[str, float | str]]:
    """Per-hospital test metrics of the pooled model after each hospital's few-shot adaptation."""
    device = pick_device()  # the GPU when one is visible, as the federated hospitals do
    model = build_model(cfg.model, fed.input_shape, cfg.seed, build_task(cfg.task).n_outputs).to(device)
    params = pooled_params(fed, cfg)
    task = build_task(cfg.task)
    held = set(cfg.data.held_out)
    out: dict[str, dict[str, float | str]] = {}
    for h in fed.hospitals:
        scores = evaluate_few_shot(model, params, h, task=task, eval_cfg=cfg.eval, meta_cfg=cfg.meta, seed=cfg.seed,
                                   device=device, splits=scored_splits(h, cfg.eval),
                                   participant=h.name not in held)
        out[h.name] = scores_row(scores, "held-out" if h.name in held else "train", cfg.eval)
    return out
