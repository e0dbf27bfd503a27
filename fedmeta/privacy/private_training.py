"""One hospital's local meta-training round under record-level DP.

Same outer loop as ``fedmeta.meta.local_training``, made private by the construction of the
hospital's plan (``fedmeta.privacy.plan``):

* per-episode clipping (second-order MAML): episodes come from a Poisson sample of records
  (``PoissonEpisodeSampler``) and every outer step goes through ``RecordLevelDPStep`` (each
  episode's meta-gradient clipped, noise of std 2*sigma*C);
* per-record DP-SGD (first-order MAML, Reptile, FedAvg): every data-touching step is a
  ``PerRecordRelease`` on a fresh Poisson sample; the inner loops, the outer step
  (``MetaAlgorithm.private_outer_step``) and the meta-update are post-processing of those releases.
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
from fedmeta.privacy.plan import EPISODE_CLIPPING, PrivacyPlan
from fedmeta.privacy.record_dp import RecordLevelDPStep
from fedmeta.privacy.record_dp_sgd import PerRecordRelease
from fedmeta.tasks import Task

__all__ = ["meta_train_privately"]


def meta_train_privately(
    model: nn.Module, global_params: Params, hospital: Hospital, cfg: MetaConfig, plan: PrivacyPlan, *,
    task: Task, rng: np.random.Generator, noise_generator: torch.Generator | None, secure_mode: bool,
    device: torch.device, noise_scale: float = 1.0, canaries: GradientCanaries | None = None,
) -> LocalResult:
    """``canaries`` (audit runs only) join the hospital's records as gradient canaries."""
    kinds = {r.mechanism for r in plan.releases}
    train = _per_episode_clipping if kinds == {EPISODE_CLIPPING} else _per_record_dp_sgd
    return train(model, global_params, hospital, cfg, plan, task=task, rng=rng, noise_generator=noise_generator,
                 secure_mode=secure_mode, device=device, noise_scale=noise_scale, canaries=canaries)


def _per_episode_clipping(model, global_params, hospital, cfg, plan, *, task, rng, noise_generator, secure_mode,
                          device, noise_scale, canaries) -> LocalResult:
    release = plan.release(EPISODE_CLIPPING)
    algorithm = get_algorithm(cfg.algorithm)
    inner = InnerLoop(steps=cfg.inner_steps, lr=cfg.inner_lr, task=task, chunk=cfg.episode_chunk)
    sampler = PoissonEpisodeSampler(hospital.x_train, hospital.y_train, sample_rate=release.sample_rate,
                                    episodes=cfg.meta_batch, support_fraction=plan.support_fraction, device=device)
    dp = RecordLevelDPStep(global_params, sigma=plan.sigma, max_grad_norm=plan.max_grad_norm,
                           episodes=cfg.meta_batch, lr=cfg.outer_lr, generator=noise_generator,
                           secure_mode=secure_mode, noise_scale=noise_scale)
    losses = []
    for _ in range(release.steps_per_round):
        batch = sampler.sample(rng)
        grads, loss = algorithm.episode_gradients(model, dp.current(), batch, inner)
        if canaries is not None:
            grads = add_canaries(grads, canaries, sample_rate=release.sample_rate, magnitude=plan.max_grad_norm,
                                 rng=rng)
        dp.step(grads)
        losses.append(float(loss.mean()))
    local = dp.current()
    update = {k: (global_params[k] - local[k]).detach() for k in local}
    return LocalResult(update=update, train_loss=float(np.mean(losses)),
                       episodes=release.steps_per_round * cfg.meta_batch)


def _per_record_dp_sgd(model, global_params, hospital, cfg, plan, *, task, rng, noise_generator, secure_mode,
                       device, noise_scale, canaries) -> LocalResult:
    x = torch.as_tensor(hospital.x_train, device=device)
    y = torch.as_tensor(hospital.y_train, device=device)
    shapes = {k: v.detach() for k, v in global_params.items()}
    releasers: dict[tuple[str, int], PerRecordRelease] = {}

    def release(mechanism: str, params: Params) -> Params:
        episodes = next(iter(params.values())).shape[0]
        if (mechanism, episodes) not in releasers:
            r = plan.release(mechanism)
            releasers[mechanism, episodes] = PerRecordRelease(
                model, x, y, task=task, shapes=shapes, episodes=episodes, sample_rate=r.sample_rate, sigma=plan.sigma,
                max_grad_norm=plan.max_grad_norm, generator=noise_generator, secure_mode=secure_mode,
                noise_scale=noise_scale)
        return releasers[mechanism, episodes].release(params, rng, canaries)

    algorithm = get_algorithm(cfg.algorithm)
    local = {k: v.detach().clone() for k, v in global_params.items()}
    for _ in range(cfg.outer_steps):
        local = algorithm.private_outer_step(local, release, cfg, global_params)
    update = {k: (global_params[k] - local[k]).detach() for k in local}
    # Losses on private samples would be one more release; the train loss is not reported.
    return LocalResult(update=update, train_loss=float("nan"), episodes=cfg.outer_steps * cfg.meta_batch)
