"""Relation networks (Sung et al. 2018): a learned relation module scores each (query, class)
pair from the query's embedding and the class's mean support embedding (the paper sums the k
embeddings; the mean keeps the scale independent of k). The module,
``w2 . relu(W1 [query; class] + b1)`` with ``RELATION_HIDDEN`` units (no output bias: the class
logits are only compared with each other), is learned with the
embedding and is part of the federation's state: aggregated, checkpointed and DP-protected like
the weights, saved as ``algorithm_state.pt``. Its score is used as the class logit of the task's
loss (the paper regresses it onto one-hot targets with a squared error).

The module starts from a fixed seed: it is part of the algorithm's definition, the same on every
node.
"""

from __future__ import annotations

import math

import torch

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.metric import MetricLearner
from fedmeta.meta.algorithms.protonet import class_means
from fedmeta.meta.functional import Params

__all__ = ["RelationNet", "RELATION_PREFIX", "RELATION_HIDDEN"]

RELATION_PREFIX = "relation:"
RELATION_HIDDEN = 8


class RelationNet(MetricLearner):
    name = "relationnet"

    def initial_state(self, params: Params, meta: MetaConfig) -> Params:
        like = next(iter(params.values()))
        g = torch.Generator().manual_seed(0)

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:  # nn.Linear's default initialisation
            bound = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(like)

        d, h = meta.embedding, RELATION_HIDDEN
        module = {"w1": uniform(h, 2 * d, fan_in=2 * d), "b1": uniform(h, fan_in=2 * d),
                  "w2": uniform(1, h, fan_in=h)}
        return {**params, **{RELATION_PREFIX + k: v for k, v in module.items()}}

    def model_params(self, state: Params) -> Params:
        return {k: v for k, v in state.items() if not k.startswith(RELATION_PREFIX)}

    def class_logits(self, state: Params, support, y_support, query, classes, weight):  # type: ignore[override]
        w1, b1, w2 = (state[RELATION_PREFIX + k] for k in ("w1", "b1", "w2"))  # (m, ...) each
        prototypes = class_means(support, y_support, classes, weight)  # (m, C, D)
        d = query.shape[-1]
        if w1.shape[-1] != 2 * d:
            raise ValueError(f"relationnet: the model embeds in {d} dimensions, its relation module expects "
                             f"meta.embedding = {w1.shape[-1] // 2}")
        # W1 [q; p] = W1[:, :D] q + W1[:, D:] p, computed without forming every pair's concatenation
        from_query = torch.einsum("mhd,mnd->mnh", w1[..., :d], query)
        from_class = torch.einsum("mhd,mcd->mch", w1[..., d:], prototypes)
        hidden = torch.relu(from_query.unsqueeze(2) + from_class.unsqueeze(1) + b1[:, None, None, :])  # (m, n, C, H)
        return torch.einsum("mnch,mh->mnc", hidden, w2[:, 0, :])
