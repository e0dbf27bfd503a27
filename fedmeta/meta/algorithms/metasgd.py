"""Meta-SGD (Li et al. 2017): the initialisation and one inner learning rate per weight, learned
together. The inner step is ``theta - alpha * grad L_S(theta)`` with ``alpha`` shaped like ``theta``
(element-wise); the meta-gradient is second order, with respect to both.

The rates are part of the learned state: the server aggregates and checkpoints them like weights,
every hospital receives and sends them, and privacy protects them with the weights (per-episode
clipping covers an episode's whole gradient, rates included). They start at ``meta.inner_lr``.
"""

from __future__ import annotations

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.base import InnerLoop
from fedmeta.meta.algorithms.maml import SecondOrderMAML
from fedmeta.meta.functional import Params, adapt

__all__ = ["MetaSGD", "RATE_PREFIX"]

RATE_PREFIX = "inner-lr:"  # state key of the rates of parameter ``name``: ``inner-lr:name``


class MetaSGD(SecondOrderMAML):
    name = "metasgd"

    def initial_state(self, params: Params, meta: MetaConfig) -> Params:
        return {**params, **{RATE_PREFIX + k: v.new_full(v.shape, meta.inner_lr) for k, v in params.items()}}

    def model_params(self, state: Params) -> Params:
        return {k: v for k, v in state.items() if not k.startswith(RATE_PREFIX)}

    def adapt(self, model, state, x, y, inner: InnerLoop, *, create_graph, weight=None, normaliser=None):  # type: ignore[override]
        params = self.model_params(state)
        rates = {k: state[RATE_PREFIX + k] for k in params}
        return adapt(model, params, x, y, inner.task, steps=inner.steps, lr=rates, create_graph=create_graph,
                     weight=weight, normaliser=normaliser)
