"""The MLP for tabular hospital data; no hidden layers is (multinomial) logistic regression."""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.config import ModelConfig
from fedmeta.errors import FedMetaError

__all__ = ["MLP", "build_mlp"]


class MLP(nn.Module):
    """ReLU MLP. One output (a binary outcome's logit, a risk score) is returned as ``(n,)``,
    K outputs (K classes) as ``(n, K)``."""

    def __init__(self, in_features: int, hidden: list[int], n_outputs: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.n_outputs == 1 else out

    def episode_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                        inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``forward`` for per-episode parameters ``{name: (m, *shape)}`` and inputs ``(m, n, features)``
        as batched matrix products: the same numbers as a ``vmap`` of ``forward`` (tested), with a
        fraction of its dispatch (``fedmeta.meta.functional.episode_outputs``). Ghost clipping
        (``fedmeta.privacy.ghost_clipping``) passes ``inputs``, which receives each linear layer's
        input."""
        h = x
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                name = f"net.{i}"
                if inputs is not None:
                    inputs[name] = h
                h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))
            else:
                h = torch.relu(h)
        return h.squeeze(-1) if self.n_outputs == 1 else h


def build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    if len(input_shape) != 1:
        raise FedMetaError(f"model.kind = \"mlp\" takes feature vectors; this data has shape {input_shape}")
    return MLP(input_shape[0], list(cfg.hidden), n_outputs)
