"""FedRep (Collins et al. 2021): a representation (the model's body) learned by the federation, a
head (the last layer, as in ANIL) that each hospital keeps and never sends. Each round, at
hospital ``i`` with the global body ``phi`` and its kept head ``h_i`` (the global model's head the
first time)::

    h_i <- h_i - inner_lr * grad_h L(phi, h_i)        meta.outer_steps steps, phi fixed
    phi_i <- phi_i - outer_lr * grad_phi L(phi_i, h_i)  meta.outer_steps steps, h_i fixed

each step on a meta-batch of episodes (support and query joined). The hospital keeps ``h_i`` next
to its ledger (``fedmeta.personal_state``) and sends ``phi - phi_i`` only; the server never
changes the global head. A hospital that trained is evaluated with ``(phi, h_i)`` as is; an unseen
hospital trains a head from the global one on its k shots (``meta.inner_steps`` steps at
``meta.inner_lr``, the body fixed), FedRep's protocol for new clients.

Hospital-level DP clips and noises the body update it sends. Record-level DP is refused: the kept
head is trained on the records without noise and shapes every body gradient that is released.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.errors import FedMetaError
from fedmeta.meta.algorithms.anil import adapt_head, head_names
from fedmeta.meta.algorithms.base import InnerLoop
from fedmeta.meta.algorithms.fedavg import FedAvgSGD
from fedmeta.meta.functional import Params

__all__ = ["FedRep"]


class FedRep(FedAvgSGD):
    name = "fedrep"
    family = "personalised-fl"
    personal = True
    predicts_unadapted = False  # the global model's head is its initial one: nothing to report

    def check_model(self, model: nn.Module) -> None:
        if {name for name, _ in model.named_parameters()} <= head_names(model):
            raise FedMetaError("meta.algorithm: 'fedrep' shares the model's body and keeps its last layer at each "
                               "hospital; this model is one layer (give model.hidden a layer)")

    def kept_at_hospital(self, model: nn.Module) -> frozenset[str]:
        return head_names(model)

    def initial_personal(self, model: nn.Module, params: Params) -> Params:
        return {k: params[k] for k in head_names(model)}

    def training_start(self, params: Params, personal: Params) -> Params:
        return self.personal_params(params, personal)

    def update_personal(self, model: nn.Module, personal: Params, global_params: Params, sampler: EpisodeSampler,
                        meta: MetaConfig, rng: np.random.Generator) -> Params:
        inner = InnerLoop(steps=meta.inner_steps, lr=meta.inner_lr, task=sampler.task, chunk=meta.episode_chunk)
        head = {k: t.detach().clone() for k, t in personal.items()}
        for _ in range(meta.outer_steps):
            grads, _ = FedAvgSGD._episode_gradients(self, model, {**global_params, **head},
                                                    sampler.sample(meta.meta_batch, rng), inner)
            head = {k: head[k] - meta.inner_lr * grads[k].mean(0) for k in head}
        return head

    def _episode_gradients(self, model, state, batch, inner):  # type: ignore[override]
        """The body's gradients; the head is fixed (zero gradient) in the body steps."""
        grads, losses = super()._episode_gradients(model, state, batch, inner)
        head = head_names(model)
        return {k: torch.zeros_like(g) if k in head else g for k, g in grads.items()}, losses

    def adapt(self, model, state, x, y, inner: InnerLoop, *, create_graph, weight=None, normaliser=None):  # type: ignore[override]
        return adapt_head(model, self.model_params(state), x, y, inner, create_graph=create_graph, weight=weight,
                          normaliser=normaliser)

    def record_releases(self, meta, support, n_train, rate):  # type: ignore[override]
        return ()
