"""Models for tabular hospital data, and the check that a model is safe to meta-train with vmap."""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.config import ModelConfig
from fedmeta.errors import FedMetaError

__all__ = ["MLP", "build_model", "check_meta_trainable", "pick_device"]


class MLP(nn.Module):
    """ReLU MLP; no hidden layers = logistic regression. One output (a binary outcome's logit) is
    returned as ``(n,)``, K outputs (K classes) as ``(n, K)``."""

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


def check_meta_trainable(model: nn.Module) -> None:
    """Refuse batch-statistics layers: their second-order gradient under vmap is silently wrong."""
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False) or isinstance(module, nn.modules.batchnorm._NormBase):
            raise FedMetaError(
                f"model: layer {name or type(module).__name__!r} ({type(module).__name__}) uses batch "
                "statistics; use LayerNorm or GroupNorm for meta-learning"
            )


def build_model(cfg: ModelConfig, n_features: int, seed: int, n_outputs: int = 1) -> nn.Module:
    """The model with a seeded initialisation (the same on every process that builds it);
    ``n_outputs`` is the task's (``Task.n_outputs``)."""
    torch.manual_seed(seed)
    model = MLP(n_features, list(cfg.hidden), n_outputs)
    check_meta_trainable(model)
    return model


def pick_device() -> torch.device:
    """The GPU when one is visible (Ray sets CUDA_VISIBLE_DEVICES per client), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
