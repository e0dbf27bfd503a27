"""ANIL (Raghu et al. 2020): almost no inner loop. Only the head (the model's last layer with
parameters) adapts in the inner loop; the body is meta-learned through the query loss, second
order as in MAML. At evaluation, too, only the head is fine-tuned.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.meta.algorithms.base import InnerLoop
from fedmeta.meta.algorithms.maml import SecondOrderMAML
from fedmeta.meta.functional import Params, adapt

__all__ = ["ANIL", "adapt_head", "head_names"]


def head_names(model: nn.Module) -> frozenset[str]:
    """The parameters of the last module (in registration order) that holds parameters itself."""
    head: frozenset[str] = frozenset()
    for prefix, module in model.named_modules():
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:
            head = frozenset(f"{prefix}.{name}" if prefix else name for name in own)
    if not head:
        raise ValueError("ANIL: the model has no parameters")
    return head


def adapt_head(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, inner: InnerLoop, *,
               create_graph: bool, weight: torch.Tensor | None = None, normaliser: float | None = None) -> Params:
    """The inner loop on the head alone; the body stays as given."""
    return adapt(model, params, x, y, inner.task, steps=inner.steps, lr=inner.lr, create_graph=create_graph,
                 only=head_names(model), weight=weight, normaliser=normaliser)


class ANIL(SecondOrderMAML):
    name = "anil"

    def adapt(self, model, state, x, y, inner: InnerLoop, *, create_graph, weight=None, normaliser=None):  # type: ignore[override]
        return adapt_head(model, self.model_params(state), x, y, inner, create_graph=create_graph, weight=weight,
                          normaliser=normaliser)
