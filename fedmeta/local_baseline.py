"""The ``local`` baseline: every hospital trains alone, nothing is shared.

A participating hospital trains on its whole train split; a held-out (new) hospital has only its
k shots per class, so it trains on those alone (averaged over the same k-shot draws as the
federated methods). Same model, same initialisation, same test splits as the federated runs.
With a validation split, each hospital's validation scores come with its test scores (``val_auc``):
``fedmeta tune`` selects on those.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmeta.config import ExperimentConfig
from fedmeta.data.episodes import sample_k_shot
from fedmeta.data.hospital import Federation, Hospital
from fedmeta.evaluation import Score, mean_score, score_params, scored_splits, scores_row
from fedmeta.meta.functional import loss_fn, params_of
from fedmeta.models import build_model, pick_device
from fedmeta.tuning.space import LOCAL_SPACE, SearchSpace
from fedmeta.tasks import build_task

__all__ = ["train_alone", "run_local_baseline"]


SEARCH_SPACE: SearchSpace = LOCAL_SPACE  # its rate, steps ("epochs"), weight decay and width


def train_alone(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: ExperimentConfig,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Adam (L2 ``local.weight_decay``, rate ``local.lr`` constant or decayed as ``local.lr_schedule``
    says) on minibatches of ``(x, y)`` from the seeded initialisation, on the model's device."""
    params = {k: v.requires_grad_(True) for k, v in params_of(model).items()}
    device = next(iter(params.values())).device
    task = build_task(cfg.task)
    opt = torch.optim.Adam(params.values(), lr=cfg.local.lr, weight_decay=cfg.local.weight_decay)
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.local.steps) \
        if cfg.local.lr_schedule == "cosine" else None
    bs = min(cfg.local.batch_size, len(y))
    for _ in range(cfg.local.steps):
        idx = torch.as_tensor(rng.choice(len(y), size=bs, replace=False), device=device)
        opt.zero_grad()
        loss_fn(model, params, xt[idx], yt[idx], task).backward()
        opt.step()
        if schedule is not None:
            schedule.step()
    return {k: v.detach() for k, v in params.items()}


def _score_held_out(model: nn.Module, h: Hospital, cfg: ExperimentConfig) -> dict[str, Score]:
    rng = np.random.default_rng([cfg.seed, 7_919])  # the same draws as evaluate_few_shot
    task = build_task(cfg.task)
    draws = []
    for _ in range(cfg.eval.draws):
        idx = sample_k_shot(h.y_train, cfg.eval.shots, rng, task)
        draws.append(train_alone(model, h.x_train[idx], h.y_train[idx], cfg, np.random.default_rng([cfg.seed, 3])))
    device = pick_device()
    return {s: mean_score([score_params(model, p, h, device, task, s) for p in draws])
            for s in scored_splits(h, cfg.eval)}


def run_local_baseline(fed: Federation, cfg: ExperimentConfig) -> dict[str, dict[str, float | str]]:
    """Per-hospital test metrics of hospitals that never share anything."""
    task = build_task(cfg.task)
    device = pick_device()  # the GPU when one is visible, as the federated hospitals do
    model = build_model(cfg.model, fed.input_shape, cfg.seed, task.n_outputs).to(device)
    held = set(cfg.data.held_out)
    out: dict[str, dict[str, float | str]] = {}
    for i, h in enumerate(fed.hospitals):
        if h.name in held:
            out[h.name] = scores_row(_score_held_out(model, h, cfg), "held-out", cfg.eval)
        else:
            params = train_alone(model, h.x_train, h.y_train, cfg, np.random.default_rng([cfg.seed, i]))
            scores = {s: score_params(model, params, h, device, task, s) for s in scored_splits(h, cfg.eval)}
            out[h.name] = scores_row(scores, "train", cfg.eval)
    return out
