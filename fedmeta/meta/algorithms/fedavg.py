"""FedAvg (McMahan et al. 2017) in the same harness: ``grad L_{S u Q}(theta)``, plain supervised
training without an inner loop (local SGD, then the server averages the model deltas). At
evaluation it fine-tunes with the inner loop's steps and rate: FedAvg + fine-tune.

Record-level DP: per-record DP-SGD, one release per outer step on a Poisson sample of
``m * (support + query)`` records.
"""

from __future__ import annotations

import torch

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.base import MetaAlgorithm, Releaser, release_rate
from fedmeta.meta.functional import Params, episode_losses, per_episode_copies
from fedmeta.privacy.plan import DP_SGD, Release

__all__ = ["FedAvgSGD"]


class FedAvgSGD(MetaAlgorithm):
    name = "fedavg"
    family = "federated"

    def _episode_gradients(self, model, state, batch, inner):  # type: ignore[override]
        x, y, w = batch.joined()
        with torch.enable_grad():
            theta = per_episode_copies(state, batch.size)
            losses = episode_losses(model, theta, x, y, inner.task, **w)
            grads = torch.autograd.grad(losses.sum(), list(theta.values()))
        return dict(zip(theta, grads)), losses.detach()

    def record_releases(self, meta: MetaConfig, support: int, n_train: int, rate: float) -> tuple[Release, ...]:
        episode = support + meta.query
        return (Release(DP_SGD, release_rate(meta.meta_batch * episode, n_train, rate), meta.outer_steps),)

    def private_outer_step(self, local: Params, release: Releaser, meta: MetaConfig, global_params: Params) -> Params:
        g = release(DP_SGD, {k: v[None] for k, v in local.items()})
        return self.local_step(local, global_params, {k: v[0] for k, v in g.items()}, meta)
