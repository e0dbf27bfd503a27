"""Batched functional model evaluation and inner-loop adaptation over a stack of episodes.

Parameters carry a leading episode dimension (one copy of the initialisation per episode); the
model's forward is ``vmap``ped over it with ``functional_call``, so any ``nn.Module`` without
batch-statistics layers works. Derivatives are taken with ``torch.autograd`` on the sum of the
episodes' losses: episodes do not share parameters, so the gradient of the sum with respect to
episode ``i``'s copy is episode ``i``'s own gradient, and one backward pass serves all episodes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedmeta.tasks import Task

__all__ = ["Params", "params_of", "loss_fn", "per_episode_copies", "episode_outputs", "episode_losses", "adapt"]

Params = dict[str, torch.Tensor]


def params_of(model: nn.Module) -> Params:
    """Detached copies of the model's parameters, in ``named_parameters`` order."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_fn(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, task: Task) -> torch.Tensor:
    """The task's mean loss of the model at ``params`` on one batch (no episode dim)."""
    return task.episode_losses(functional_call(model, params, (x,))[None], y[None])[0]


def per_episode_copies(params: Params, m: int, requires_grad: bool = True) -> Params:
    """``m`` independent copies of ``params`` stacked on a new leading dimension."""
    return {k: v.detach().unsqueeze(0).expand(m, *v.shape).clone().requires_grad_(requires_grad)
            for k, v in params.items()}


def episode_outputs(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Outputs ``(m, n, ...)`` of per-episode parameters ``{k: (m, *shape)}`` on inputs ``(m, n, ...)``:
    a ``vmap`` of the model's forward, or the model class's own ``episode_forward`` where the class
    itself defines one (fedmeta's MLP: batched matrix products, a third of the meta-step's time). A
    subclass that only overrides ``forward`` is vmapped."""
    batched = type(model).__dict__.get("episode_forward")
    if batched is not None:
        return batched(model, params, x)
    return vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, x)


def episode_losses(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, task: Task,
                   weight: torch.Tensor | None = None, normaliser: float | None = None) -> torch.Tensor:
    """Loss of each episode ``(m,)`` with per-episode parameters ``{k: (m, *shape)}`` and data
    ``(m, n, ...)`` (``Task.episode_losses``: the mean, or weighted with a fixed normaliser)."""
    return task.episode_losses(episode_outputs(model, params, x), y, weight, normaliser)


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, task: Task, *, steps: int,
          lr: float | Params, create_graph: bool, only: frozenset[str] | None = None,
          weight: torch.Tensor | None = None, normaliser: float | None = None) -> Params:
    """``steps`` SGD steps per episode; with ``create_graph`` the result stays differentiable with
    respect to ``params`` (and ``lr``) through every step (second order).

    ``lr``: one rate, or one tensor per adapted parameter shaped like it (Meta-SGD's learned rates).
    ``only``: the parameters that adapt (ANIL's head); the others stay as given."""
    names = [k for k in params if only is None or k in only]
    with torch.enable_grad():
        fast = params
        for _ in range(steps):
            total = episode_losses(model, fast, x, y, task, weight, normaliser).sum()
            grads = torch.autograd.grad(total, [fast[k] for k in names], create_graph=create_graph)
            step = {k: (lr[k] if isinstance(lr, dict) else lr) * g for k, g in zip(names, grads)}
            fast = {k: fast[k] - step[k] if k in step else fast[k] for k in fast}
            if not create_graph:
                fast = {k: v.detach().requires_grad_(k in step) for k, v in fast.items()}
    return fast
