"""Loss and differentiable inner-loop adaptation on a parameter dict (torch.func)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

__all__ = ["Params", "params_of", "loss_fn", "adapt"]

Params = dict[str, torch.Tensor]


def params_of(model: nn.Module) -> Params:
    """Detached copies of the model's parameters, in ``named_parameters`` order."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_fn(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the model's logit at ``params``."""
    logits = functional_call(model, params, (x,))
    return F.binary_cross_entropy_with_logits(logits, y)


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> Params:
    """``steps`` plain SGD steps on ``(x, y)``; differentiable through every step (second order)."""
    step_grad = grad(lambda p: loss_fn(model, p, x, y))
    for _ in range(steps):
        g = step_grad(params)
        params = {k: params[k] - lr * g[k] for k in params}
    return params
