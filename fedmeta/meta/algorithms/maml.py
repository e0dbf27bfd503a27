"""Second-order MAML (Finn et al. 2017): ``d/dtheta L_Q(U_k(theta; S))``, differentiating through
the inner loop.

Record-level DP: per-episode clipping. Each episode's meta-gradient is clipped and the sum noised
(``fedmeta.privacy.record_dp``); one release per outer step on a Poisson sample of
``m * (support + query)`` records.
"""

from __future__ import annotations

import torch

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.base import MetaAlgorithm, release_rate
from fedmeta.meta.functional import episode_losses, per_episode_copies
from fedmeta.privacy.plan import EPISODE_CLIPPING, Release

__all__ = ["SecondOrderMAML"]


class SecondOrderMAML(MetaAlgorithm):
    name = "maml"
    second_order = True  # False: first-order MAML's gradient at the adapted weights

    def _episode_gradients(self, model, state, batch, inner):  # type: ignore[override]
        with torch.enable_grad():
            theta = per_episode_copies(state, batch.size)
            fast = self.adapt(model, theta, batch.x_support, batch.y_support, inner, create_graph=self.second_order,
                              **batch.support())
            losses = episode_losses(model, fast, batch.x_query, batch.y_query, inner.task, **batch.query())
            wrt = theta if self.second_order else fast
            grads = torch.autograd.grad(losses.sum(), list(wrt.values()), allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt.values(), grads)]
        return dict(zip(wrt, grads)), losses.detach()

    def record_releases(self, meta: MetaConfig, support: int, n_train: int, rate: float) -> tuple[Release, ...]:
        episode = support + meta.query
        return (Release(EPISODE_CLIPPING, release_rate(meta.meta_batch * episode, n_train, rate), meta.outer_steps),)
