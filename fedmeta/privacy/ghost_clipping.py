"""Per-record clipping without per-record gradients, for fedmeta's MLP (and logistic regression).

A record's gradient of a linear layer is the outer product of the layer's backprop and input rows,
``g_i a_i^T`` (and ``g_i`` for the bias), so its squared norm is ``|g_i|^2 (|a_i|^2 + 1)`` and the
clipped sum is ``sum_i c_i g_i a_i^T``: one forward and one backward per episode, the "ghost
clipping" of Li et al. 2022 / Opacus' fast gradient clipping. One forward without a graph
(``MLP.episode_forward``, all episodes at once), the loss's gradient with respect to the outputs,
and the backward through the linear layers and ReLUs by hand. The sums equal clipping materialised
per-record gradients (``tests/test_privacy_per_record.py``).

Only for a model known to treat each record alone (``fedmeta.models.MLP``: linear layers and
ReLUs): the episode's records go through it as one batch, and a forward that mixed them (a
statistic over the batch in a user's module) would make a record's gradient depend on the others,
which clipping per record does not bound. Any other model takes per-record gradients, each record
computed alone.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.meta.functional import Params
from fedmeta.models.mlp import MLP
from fedmeta.tasks import Task

__all__ = ["GhostClipping"]


class GhostClipping:
    def __init__(self, model: nn.Module, task: Task):
        self.model, self.task = model, task
        self.applies = type(model) is MLP and all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model.net)
        self.linears = {f"net.{i}": m for i, m in enumerate(model.net) if isinstance(m, nn.Linear)} \
            if self.applies else {}

    def clipped_sums(self, params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                     clip: float) -> tuple[Params, torch.Tensor] | None:
        """Per episode, ``sum_i min(1, C / (|grad_i| + 1e-6)) grad_i`` over its records ``x[e]``
        (``weight`` 0 for padding), and the records' gradient norms ``(m, width)``. None for a model
        it does not apply to, or records that are not feature vectors ``(m, width, features)``: a
        record's gradient is then not one outer product per layer, and this norm would not be its norm."""
        if not self.applies or x.dim() != 3:
            return None
        detached = {k: v.detach() for k, v in params.items()}
        inputs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            outputs = self.model.episode_forward(detached, x, inputs)
        with torch.enable_grad():
            outputs.requires_grad_(True)
            (g,) = torch.autograd.grad((weight * self.task.example_losses(outputs, y)).sum(), outputs)
        # The backward through linear layers and ReLUs by hand: each layer's backprop is the next
        # one's times its weight, where the ReLU let the input through (its output > 0).
        g = g.reshape(*x.shape[:2], -1)
        names = list(self.linears)
        backprops: dict[str, torch.Tensor] = {}
        for i in range(len(names) - 1, -1, -1):
            backprops[names[i]] = g
            if i:
                g = torch.bmm(g, detached[f"{names[i]}.weight"]) * (inputs[names[i]] > 0)
        norm2 = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
        for name in self.linears:
            g2 = backprops[name].pow(2).sum(-1)
            norm2 = norm2 + g2 * inputs[name].pow(2).sum(-1) + g2  # weight and bias
        norms = norm2.sqrt()
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        sums: Params = {}
        for name in self.linears:
            g = backprops[name] * factor[..., None]
            sums[f"{name}.weight"] = torch.einsum("ewo,ewi->eoi", g, inputs[name])
            sums[f"{name}.bias"] = g.sum(1)
        return {k: sums[k] for k in params}, norms
