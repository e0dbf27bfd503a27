"""Reptile (Nichol et al. 2018): ``theta - U_k(theta; S u Q)``, the displacement of the inner loop
on the whole episode (outer step ``theta -= eps * mean``).

Record-level DP: per-record DP-SGD. Every inner step of every episode is a release on a Poisson
sample the size of an episode; the displacement is post-processing.
"""

from __future__ import annotations

import torch

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.base import MetaAlgorithm, Releaser, release_rate
from fedmeta.meta.functional import Params, episode_losses, per_episode_copies
from fedmeta.privacy.plan import DP_SGD, Release

__all__ = ["Reptile"]


class Reptile(MetaAlgorithm):
    name = "reptile"

    def _episode_gradients(self, model, state, batch, inner):  # type: ignore[override]
        x, y, w = batch.joined()
        theta = per_episode_copies(state, batch.size)
        fast = self.adapt(model, theta, x, y, inner, create_graph=False, **w)
        with torch.no_grad():
            direction = {k: theta[k] - fast[k] for k in theta}
            losses = episode_losses(model, fast, x, y, inner.task, **w)
        return direction, losses

    def record_releases(self, meta: MetaConfig, support: int, n_train: int, rate: float) -> tuple[Release, ...]:
        per_outer = meta.outer_steps * meta.meta_batch
        return (Release(DP_SGD, release_rate(support + meta.query, n_train, rate), per_outer * meta.inner_steps),)

    def private_outer_step(self, local: Params, release: Releaser, meta: MetaConfig, global_params: Params) -> Params:
        m = meta.meta_batch
        theta = {k: v[None].expand(m, *v.shape) for k, v in local.items()}
        fast = dict(theta)
        for _ in range(meta.inner_steps):
            g = release(DP_SGD, fast)
            fast = {k: fast[k] - meta.inner_lr * g[k] for k in fast}
        return self.local_step(local, global_params, {k: (theta[k] - fast[k]).mean(0) for k in local}, meta)
