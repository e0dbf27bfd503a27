"""Batched functional model evaluation and inner-loop adaptation over a stack of episodes.

Parameters carry a leading episode dimension (one copy of the initialisation per episode); the
model's forward is ``vmap``ped over it with ``functional_call``, so any ``nn.Module`` without
batch-statistics layers works. Derivatives are taken with ``torch.autograd`` on the sum of the
episodes' losses: episodes do not share parameters, so the gradient of the sum with respect to
episode ``i``'s copy is episode ``i``'s own gradient, and one backward pass serves all episodes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

__all__ = ["Params", "params_of", "loss_fn", "per_episode_copies", "episode_losses", "adapt"]

Params = dict[str, torch.Tensor]


def params_of(model: nn.Module) -> Params:
    """Detached copies of the model's parameters, in ``named_parameters`` order."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_fn(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the model's logit at ``params`` (one episode, no batch dim)."""
    return F.binary_cross_entropy_with_logits(functional_call(model, params, (x,)), y)


def per_episode_copies(params: Params, m: int, requires_grad: bool = True) -> Params:
    """``m`` independent copies of ``params`` stacked on a new leading dimension."""
    return {k: v.detach().unsqueeze(0).expand(m, *v.shape).clone().requires_grad_(requires_grad)
            for k, v in params.items()}


def episode_losses(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
                   weight: torch.Tensor | None = None, normaliser: float | None = None) -> torch.Tensor:
    """Loss of each episode ``(m,)`` with per-episode parameters ``{k: (m, *shape)}`` and data ``(m, n, d)``.

    Without ``weight`` it is the mean over the episode's examples. With a 0/1 ``weight`` (padded
    episodes of varying size) it is ``sum(weight * loss) / normaliser``: a fixed normaliser keeps
    one record's influence on its episode's loss independent of the other records.
    """
    logits = vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, x)
    per_example = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if weight is None:
        return per_example.mean(-1)
    if normaliser is None:
        raise ValueError("a weighted episode loss needs a data-independent normaliser")
    return (per_example * weight).sum(-1) / normaliser


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
          create_graph: bool, weight: torch.Tensor | None = None, normaliser: float | None = None) -> Params:
    """``steps`` SGD steps per episode; with ``create_graph`` the result stays differentiable with
    respect to ``params`` through every step (second order)."""
    names = list(params)
    with torch.enable_grad():
        fast = params
        for _ in range(steps):
            total = episode_losses(model, fast, x, y, weight, normaliser).sum()
            grads = torch.autograd.grad(total, [fast[k] for k in names], create_graph=create_graph)
            fast = {k: fast[k] - lr * g for k, g in zip(names, grads)}
            if not create_graph:
                fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
    return fast
