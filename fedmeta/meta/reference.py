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
    model: nn.Module, params: dict[str, torch.Tensor], batch: EpisodeBatch, *, steps: int, lr: float, task: Task,
    rates: dict[str, torch.Tensor] | None = None, only: frozenset[str] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Second-order MAML meta-gradient of each episode, one at a time, on the task's mean loss.

    ``rates`` (Meta-SGD): one learned rate per weight instead of ``lr``; their meta-gradients are
    returned too, under the same keys prefixed ``rate:``. ``only`` (ANIL): the parameters the inner
    loop adapts; the others stay, and still get their meta-gradient through the query loss."""
    names = list(params)
    adapted = [n for n in names if only is None or n in only]
    out = []
    for i in range(batch.size):
        theta = [params[n].detach().clone().requires_grad_(True) for n in names]
        alpha = {n: rates[n].detach().clone().requires_grad_(True) for n in adapted} if rates else {}
        fast = dict(zip(names, theta))
        for _ in range(steps):
            loss = task.episode_losses(_forward(model, [fast[n] for n in names], batch.x_support[i])[None],
                                       batch.y_support[i][None])[0]
            grads = torch.autograd.grad(loss, [fast[n] for n in adapted], create_graph=True)
            fast = {**fast, **{n: fast[n] - (alpha[n] if alpha else lr) * g for n, g in zip(adapted, grads)}}
        qloss = task.episode_losses(_forward(model, [fast[n] for n in names], batch.x_query[i])[None],
                                    batch.y_query[i][None])[0]
        meta = torch.autograd.grad(qloss, [*theta, *alpha.values()])
        out.append({**dict(zip(names, meta)), **{f"rate:{n}": g for n, g in zip(alpha, meta[len(names):])}})
    return out
