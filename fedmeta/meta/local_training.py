"""One hospital's local meta-training for one round: outer steps on its own episodes.

The result is a *meta-update* ``theta_global - theta_local`` (a pseudo-gradient, as in FedOpt):
with one outer step and ``outer_lr = 1`` it is exactly the meta-gradient; the server treats it as
a gradient for its own meta-optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.meta.algorithms import InnerLoop, get_algorithm
from fedmeta.meta.functional import Params

__all__ = ["LocalResult", "meta_train_locally"]


@dataclass(frozen=True)
class LocalResult:
    update: Params
    train_loss: float
    episodes: int


def meta_train_locally(
    model: nn.Module, global_params: Params, sampler: EpisodeSampler, cfg: MetaConfig, rng: np.random.Generator,
    episode_hook: Callable[[Params], Params] | None = None,
) -> LocalResult:
    """Outer steps on the sampler's episodes, with its task's loss. ``episode_hook`` may alter the
    per-episode gradients of each step (audit canaries only)."""
    algorithm = get_algorithm(cfg.algorithm)
    inner = InnerLoop(steps=cfg.inner_steps, lr=cfg.inner_lr, task=sampler.task, chunk=cfg.episode_chunk)
    params = {k: v.detach().clone() for k, v in global_params.items()}
    losses = []
    for _ in range(cfg.outer_steps):
        batch = sampler.sample(cfg.meta_batch, rng)
        per_episode, loss = algorithm.episode_gradients(model, params, batch, inner)
        if episode_hook is not None:
            per_episode = episode_hook(per_episode)
        params = algorithm.local_step(params, global_params, {k: g.mean(0) for k, g in per_episode.items()}, cfg)
        losses.append(float(loss.mean()))
    update = {k: (global_params[k] - params[k]).detach() for k in params}
    return LocalResult(update=update, train_loss=float(np.mean(losses)), episodes=cfg.outer_steps * cfg.meta_batch)
