"""Prototypical networks (Snell et al. 2017): an episode's class prototypes are the mean embeddings
of its support examples of each class, and a query's logit for class ``c`` is minus its squared
Euclidean distance to prototype ``c``. A class with no support example in an episode (possible
only under Poisson sampling with privacy) gets the origin as its prototype. Shared with the other
metric-based learners: ``fedmeta.meta.algorithms.metric``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmeta.meta.algorithms.metric import MetricLearner
from fedmeta.meta.functional import Params

__all__ = ["ProtoNet", "class_means"]


def class_means(support: torch.Tensor, y_support: torch.Tensor, classes: int,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """``(m, classes, D)``: the weighted mean of each class's support embeddings ``(m, s, D)``."""
    onehot = F.one_hot(y_support.long(), classes).to(support.dtype)  # (m, s, C)
    if weight is not None:
        onehot = onehot * weight.unsqueeze(-1)
    counts = onehot.sum(1).clamp_min(1e-12)  # (m, C)
    return torch.einsum("msc,msd->mcd", onehot, support) / counts.unsqueeze(-1)


class ProtoNet(MetricLearner):
    name = "protonet"

    def class_logits(self, state: Params, support, y_support, query, classes, weight):  # type: ignore[override]
        prototypes = class_means(support, y_support, classes, weight)
        return -((query.unsqueeze(2) - prototypes.unsqueeze(1)) ** 2).sum(-1)
