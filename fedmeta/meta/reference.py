"""Per-task reference for second-order MAML: explicit ``autograd.grad(create_graph=True)`` loops.

Independent of ``torch.func``; used to verify the batched engine and as the benchmark baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.data.episodes import EpisodeBatch
from fedmeta.tasks import Task

__all__ = ["reference_maml_gradients"]


def _forward(model: nn.Module, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], weights)), (x,))


def reference_maml_gradients(
    model: nn.Module, params: dict[str, torch.Tensor], batch: EpisodeBatch, *, steps: int, lr: float, task: Task
) -> list[dict[str, torch.Tensor]]:
    """Second-order MAML meta-gradient of each episode, one at a time, on the task's mean loss."""
    names = list(params)
    out = []
    for i in range(batch.size):
        theta = [params[n].detach().clone().requires_grad_(True) for n in names]
        fast = theta
        for _ in range(steps):
            loss = task.episode_losses(_forward(model, fast, batch.x_support[i])[None], batch.y_support[i][None])[0]
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [w - lr * g for w, g in zip(fast, grads)]
        qloss = task.episode_losses(_forward(model, fast, batch.x_query[i])[None], batch.y_query[i][None])[0]
        meta = torch.autograd.grad(qloss, theta)
        out.append(dict(zip(names, meta)))
    return out
