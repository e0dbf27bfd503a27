"""The check every model and task must pass: the batched (vmapped) second-order MAML meta-gradient
equals the per-task ``autograd.grad(create_graph=True)`` loop, episode by episode (float64)."""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.functional import params_of
from fedmeta.meta.reference import reference_maml_gradients


def assert_maml_matches_reference(model: nn.Module, batch: EpisodeBatch, inner: InnerLoop, *,
                                  rtol: float = 1e-10, atol: float = 1e-12) -> None:
    params = params_of(model)
    grads, _ = ALGORITHMS["maml"].episode_gradients(model, params, batch, inner)
    ref = reference_maml_gradients(model, params, batch, steps=inner.steps, lr=inner.lr, task=inner.task)
    for i, r in enumerate(ref):
        for k in params:
            torch.testing.assert_close(grads[k][i], r[k], rtol=rtol, atol=atol)
