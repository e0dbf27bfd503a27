"""Matching networks (Vinyals et al. 2016), without full-context embeddings: a query's class
probabilities are an attention over the support set, ``p(c | x) = sum_i a(x, x_i) [y_i = c]`` with
``a`` the softmax over ``i`` of the cosine similarity of the embeddings; its logits are
``log p(c | x)``. Padding (weight 0) gets no attention. Shared with the other metric-based
learners: ``fedmeta.meta.algorithms.metric``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmeta.meta.algorithms.metric import MetricLearner
from fedmeta.meta.functional import Params

__all__ = ["MatchingNet"]

_FLOOR = 1e-12  # a class without attention: log of this, not -inf


class MatchingNet(MetricLearner):
    name = "matchingnet"

    def class_logits(self, state: Params, support, y_support, query, classes, weight):  # type: ignore[override]
        cosine = torch.einsum("mnd,msd->mns", F.normalize(query, dim=-1), F.normalize(support, dim=-1))
        if weight is not None:
            cosine = cosine.masked_fill(weight.unsqueeze(1) <= 0, float("-inf"))
        attention = cosine.softmax(-1)  # (m, n, s)
        onehot = F.one_hot(y_support.long(), classes).to(support.dtype)  # (m, s, C)
        return torch.log(torch.einsum("mns,msc->mnc", attention, onehot) + _FLOOR)
