"""One hospital's local meta-training round under record-level DP.

Same outer loop as ``fedmeta.meta.local_training``, with two changes that make it private: episodes
come from a Poisson sample of records (``PoissonEpisodeSampler``) and every outer step goes through
``RecordLevelDPStep`` (per-episode clipping, noise of std 2*sigma*C). The returned meta-update is
post-processing of those private steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmeta.config import MetaConfig
from fedmeta.data.hospital import Hospital
from fedmeta.meta.algorithms import InnerLoop, get_algorithm
from fedmeta.meta.functional import Params
from fedmeta.meta.local_training import LocalResult
from fedmeta.privacy.canaries import GradientCanaries, add_canaries
from fedmeta.privacy.episode_sampling import PoissonEpisodeSampler
from fedmeta.privacy.plan import PrivacyPlan
from fedmeta.privacy.record_dp import RecordLevelDPStep

__all__ = ["meta_train_privately"]


def meta_train_privately(
    model: nn.Module, global_params: Params, hospital: Hospital, cfg: MetaConfig, plan: PrivacyPlan, *,
    rng: np.random.Generator, noise_generator: torch.Generator | None, secure_mode: bool, device: torch.device,
    noise_scale: float = 1.0, canaries: GradientCanaries | None = None,
) -> LocalResult:
    """``canaries`` (audit runs only) join the hospital's records as gradient canaries."""
    algorithm = get_algorithm(cfg.algorithm)
    inner = InnerLoop(steps=cfg.inner_steps, lr=cfg.inner_lr)
    sampler = PoissonEpisodeSampler(hospital.x_train, hospital.y_train, sample_rate=plan.sample_rate,
                                    episodes=cfg.meta_batch, support_fraction=plan.support_fraction, device=device)
    dp = RecordLevelDPStep(global_params, sigma=plan.sigma, max_grad_norm=plan.max_grad_norm,
                           episodes=cfg.meta_batch, lr=cfg.outer_lr, generator=noise_generator,
                           secure_mode=secure_mode, noise_scale=noise_scale)
    losses = []
    for _ in range(plan.steps_per_round):
        batch = sampler.sample(rng)
        grads, loss = algorithm.episode_gradients(model, dp.current(), batch, inner)
        if canaries is not None:
            grads = add_canaries(grads, canaries, sample_rate=plan.sample_rate, magnitude=plan.max_grad_norm,
                                 rng=rng)
        dp.step(grads)
        losses.append(float(loss.mean()))
    local = dp.current()
    update = {k: (global_params[k] - local[k]).detach() for k in local}
    return LocalResult(update=update, train_loss=float(np.mean(losses)),
                       episodes=plan.steps_per_round * cfg.meta_batch)
