"""Gradient canaries for the one-run audit (Steinke, Nasr, Jagielski 2023, white-box setting).

Low-dimensional tabular records make poor canaries: their gradients overlap, so no single one can
be told apart. A gradient canary is a record whose loss gradient is a Dirac vector ``C * e_j`` on
its own parameter coordinate ``j`` (no two canaries share one). Each canary is "in" with
probability 1/2 (the auditor's secret coin); an "in" canary is then treated exactly like a record
of the audited hospital: Poisson-sampled with the hospital's rate ``q`` at every outer step, put
into a uniformly random episode slot, and its gradient added to that slot's before clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmeta.config import AuditConfig
from fedmeta.meta.functional import Params

__all__ = ["GradientCanaries", "make_canaries", "add_canaries"]


@dataclass(frozen=True)
class GradientCanaries:
    coords: np.ndarray  # (m,) distinct flat parameter indices
    included: np.ndarray  # (m,) bool: the auditor's secret coins


def make_canaries(cfg: AuditConfig, n_params: int) -> GradientCanaries:
    if cfg.canaries > n_params:
        raise ValueError(f"{cfg.canaries} canaries need as many parameters; the model has {n_params}")
    rng = np.random.default_rng([cfg.seed, 31_337])
    return GradientCanaries(coords=rng.choice(n_params, size=cfg.canaries, replace=False),
                            included=rng.uniform(size=cfg.canaries) < 0.5)


def add_canaries(episode_grads: Params, canaries: GradientCanaries, *, sample_rate: float, magnitude: float,
                 rng: np.random.Generator) -> Params:
    """Per-episode gradients with this step's sampled "in" canaries added to random slots."""
    names = list(episode_grads)
    m = episode_grads[names[0]].shape[0]
    flat = torch.cat([episode_grads[k].reshape(m, -1) for k in names], dim=1).clone()
    members = canaries.coords[canaries.included]
    sampled = members[rng.uniform(size=len(members)) < sample_rate]
    slots = rng.integers(0, m, size=len(sampled))
    flat[torch.as_tensor(slots), torch.as_tensor(sampled)] += magnitude
    out, offset = {}, 0
    for k in names:
        n = episode_grads[k][0].numel()
        out[k] = flat[:, offset:offset + n].reshape(episode_grads[k].shape)
        offset += n
    return out
