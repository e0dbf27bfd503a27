"""The ``local`` baseline: every hospital trains alone, nothing is shared.

A participating hospital trains on its whole train split; a held-out (new) hospital has only its
k shots per class, so it trains on those alone (averaged over the same k-shot draws as the
federated methods). Same model, same initialisation, same test splits as the federated runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmeta.config import ExperimentConfig
from fedmeta.data.episodes import sample_k_shot
from fedmeta.data.hospital import Federation, Hospital
from fedmeta.evaluation import Score, score_params
from fedmeta.meta.functional import loss_fn, params_of
from fedmeta.models import build_model

__all__ = ["train_alone", "run_local_baseline"]


def train_alone(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: ExperimentConfig,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Adam on minibatches of ``(x, y)`` from the seeded initialisation."""
    params = {k: v.requires_grad_(True) for k, v in params_of(model).items()}
    opt = torch.optim.Adam(params.values(), lr=cfg.local.lr)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    bs = min(cfg.local.batch_size, len(y))
    for _ in range(cfg.local.steps):
        idx = torch.as_tensor(rng.choice(len(y), size=bs, replace=False))
        opt.zero_grad()
        loss_fn(model, params, xt[idx], yt[idx]).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def _score_held_out(model: nn.Module, h: Hospital, cfg: ExperimentConfig) -> Score:
    rng = np.random.default_rng([cfg.seed, 7_919])  # the same draws as evaluate_few_shot
    scores = []
    for _ in range(cfg.eval.draws):
        idx = sample_k_shot(h.y_train, cfg.eval.shots, rng)
        params = train_alone(model, h.x_train[idx], h.y_train[idx], cfg, np.random.default_rng([cfg.seed, 3]))
        scores.append(score_params(model, params, h, torch.device("cpu")))
    return Score(float(np.mean([s.auc for s in scores])), float(np.mean([s.accuracy for s in scores])))


def run_local_baseline(fed: Federation, cfg: ExperimentConfig) -> dict[str, dict[str, float | str]]:
    """Per-hospital test metrics of hospitals that never share anything."""
    model = build_model(cfg.model, fed.n_features, cfg.seed)
    held = set(cfg.data.held_out)
    out: dict[str, dict[str, float | str]] = {}
    for i, h in enumerate(fed.hospitals):
        if h.name in held:
            score, role = _score_held_out(model, h, cfg), "held-out"
        else:
            params = train_alone(model, h.x_train, h.y_train, cfg, np.random.default_rng([cfg.seed, i]))
            score, role = score_params(model, params, h, torch.device("cpu")), "train"
        out[h.name] = {**score.as_dict(), "role": role}
    return out
