"""Ditto (Li et al. 2021): FedAvg for the global model, plus a personal model ``v`` that each
hospital keeps and never sends, trained each round on its own data with a pull towards the
round's global model::

    v <- v - eta * (grad L(v) + lambda * (v - theta_global))

(``meta.outer_steps`` steps of size ``meta.outer_lr`` on episodes of the hospital's data,
``lambda`` = ``meta.ditto_lambda``; ``v`` starts at the global model of the hospital's first
round). A hospital that trained is evaluated with its personal model as is; an unseen hospital has
none and fine-tunes the global model like FedAvg. The personal model lives next to the hospital's
ledger (``fedmeta.personal_state``).

Record-level DP: FedAvg's construction for what is sent; the personal model is never released.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.meta.algorithms.base import InnerLoop
from fedmeta.meta.algorithms.fedavg import FedAvgSGD
from fedmeta.meta.algorithms.fedprox import proximal_step
from fedmeta.meta.functional import Params
from fedmeta.tuning.space import FEDERATED_SPACE, Param

__all__ = ["Ditto"]


class Ditto(FedAvgSGD):
    name = "ditto"
    family = "personalised-fl"
    personal = True
    search_space = (*FEDERATED_SPACE, Param("meta.ditto_lambda", 1e-3, 10.0, log=True))

    def update_personal(self, model: nn.Module, personal: Params, global_params: Params, sampler: EpisodeSampler,
                        meta: MetaConfig, rng: np.random.Generator) -> Params:
        inner = InnerLoop(steps=meta.inner_steps, lr=meta.inner_lr, task=sampler.task, chunk=meta.episode_chunk)
        v = {k: t.detach().clone() for k, t in personal.items()}
        for _ in range(meta.outer_steps):
            grads, _ = self.meta_gradient(model, v, sampler.sample(meta.meta_batch, rng), inner)
            v = proximal_step(v, global_params, grads, meta.outer_lr, meta.ditto_lambda)
        return v
