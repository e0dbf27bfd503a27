"""A hand-written reference for the algorithms that train on whole episodes (support and query
joined: Ditto's personal model, FedRep's head and body), and the small setting their tests share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedmeta.data.episodes import EpisodeSampler
from fedmeta.models import MLP
from fedmeta.tasks import BinaryTask


def episode_grads(model, params, batch) -> list[dict[str, torch.Tensor]]:
    """Per episode, the gradient of the BCE on support and query joined, one autograd call each."""
    out = []
    for i in range(batch.size):
        w = {k: t.clone().requires_grad_(True) for k, t in params.items()}
        loss = F.binary_cross_entropy_with_logits(
            torch.func.functional_call(model, w, (torch.cat([batch.x_support[i], batch.x_query[i]]),)),
            torch.cat([batch.y_support[i], batch.y_query[i]]))
        out.append(dict(zip(w, torch.autograd.grad(loss, list(w.values())))))
    return out


def small_setting() -> tuple[MLP, EpisodeSampler]:
    """An MLP 5-8-1 in float64 and an episode sampler over 60 random records."""
    torch.manual_seed(1)
    model = MLP(5, [8]).double()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), (rng.random(60) < 0.5).astype(float)
    return model, EpisodeSampler(x, y, task=BinaryTask(), shots=3, query=4, device=torch.device("cpu"))
