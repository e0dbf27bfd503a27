"""Per-record clipping without per-record gradients, for fedmeta's MLP (and logistic regression).

A record's gradient of a linear layer is the outer product of the layer's backprop and input rows,
``g_i a_i^T`` (and ``g_i`` for the bias), so its squared norm is ``|g_i|^2 (|a_i|^2 + 1)`` and the
clipped sum is ``sum_i c_i g_i a_i^T``: one forward and one backward per episode, the "ghost
clipping" of Li et al. 2022 / Opacus' fast gradient clipping. The backprops are the gradients with
respect to a zero added to each layer's output; everything is vmapped over episodes. The sums equal
clipping materialised per-record gradients (``tests/test_privacy_per_record.py``).

Only for a model known to treat each record alone (``fedmeta.models.MLP``: linear layers and
ReLUs): the episode's records go through it as one batch, and a forward that mixed them (a
statistic over the batch in a user's module) would make a record's gradient depend on the others,
which clipping per record does not bound. Any other model takes per-record gradients, each record
computed alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedmeta.meta.functional import Params
from fedmeta.models.mlp import MLP
from fedmeta.tasks import Task

__all__ = ["GhostClipping"]

REUSED = "\0reused"  # marks a linear layer the forward called more than once


class GhostClipping:
    def __init__(self, model: nn.Module, task: Task):
        self.model, self.task = model, task
        self.linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        held = {f"{name}.{p}" for name, m in self.linears.items() for p, _ in m.named_parameters(recurse=False)}
        self.applies = (type(model) is MLP and all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model.net)
                        and held == {name for name, _ in model.named_parameters()})

        def forward(zeros: dict[str, torch.Tensor], params: Params, x: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            inputs: dict[str, torch.Tensor] = {}

            def tap(name: str):
                def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
                    if name in inputs:  # a layer applied twice: a record's gradient is a sum of two outer products
                        inputs[REUSED] = args[0]
                        return out
                    inputs[name] = args[0]
                    return out + zeros[name] if out.shape == zeros[name].shape else out
                return hook

            handles = [m.register_forward_hook(tap(name)) for name, m in self.linears.items()]
            try:
                outputs = functional_call(model, params, (x,))
            finally:
                for h in handles:
                    h.remove()
            return outputs, inputs

        self._forward = vmap(forward)

    def clipped_sums(self, params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                     clip: float) -> tuple[Params, torch.Tensor] | None:
        """Per episode, ``sum_i min(1, C / (|grad_i| + 1e-6)) grad_i`` over its records ``x[e]``
        (``weight`` 0 for padding), and the records' gradient norms ``(m, width)``. None when a
        layer sees more than one row per record (a sequence) or runs more or less than once: a
        record's gradient is then not one outer product, and this norm would not be its norm."""
        m, width = x.shape[:2]
        zeros = {name: torch.zeros(m, width, layer.out_features, dtype=x.dtype, device=x.device, requires_grad=True)
                 for name, layer in self.linears.items()}
        with torch.enable_grad():
            outputs, inputs = self._forward(zeros, {k: v.detach() for k, v in params.items()}, x)
            if REUSED in inputs or set(inputs) != set(self.linears) or any(v.dim() != 3 for v in inputs.values()):
                return None
            loss = (weight * self.task.example_losses(outputs, y)).sum()
            backprops = dict(zip(zeros, torch.autograd.grad(loss, list(zeros.values()))))
        inputs = {k: v.detach() for k, v in inputs.items()}
        norm2 = torch.zeros(m, width, dtype=x.dtype, device=x.device)
        for name, layer in self.linears.items():
            g2 = backprops[name].pow(2).sum(-1)
            norm2 = norm2 + g2 * inputs[name].pow(2).sum(-1) + (g2 if layer.bias is not None else 0)
        norms = norm2.sqrt()
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        sums: Params = {}
        for name, layer in self.linears.items():
            g = backprops[name] * factor[..., None]
            prefix = f"{name}." if name else ""
            sums[prefix + "weight"] = torch.einsum("ewo,ewi->eoi", g, inputs[name])
            if layer.bias is not None:
                sums[prefix + "bias"] = g.sum(1)
        return {k: sums[k] for k in params}, norms
