"""Models behind a registry (``[model] kind``; ``model.factory`` selects the user's own), and the
check that a model is safe to meta-train with vmap."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedmeta.config import ModelConfig
from fedmeta.errors import FedMetaError
from fedmeta.models.convnet import build_convnet
from fedmeta.models.factory import build_from_factory
from fedmeta.models.mlp import MLP, build_mlp
from fedmeta.models.resnet import build_resnet

__all__ = ["MLP", "MODELS", "WIDTH_SETTING", "build_model", "check_meta_trainable", "pick_device"]

# kind -> builder(cfg, input_shape, n_outputs); the registry the config checks ``model.kind`` against.
MODELS: dict[str, Callable[[ModelConfig, tuple[int, ...], int], nn.Module]] = {
    "mlp": build_mlp,  # tables
    "convnet": build_convnet,  # images: the conv4 backbone of few-shot learning
    "resnet": build_resnet,  # images: a small ResNet
}

# kind -> the setting that sets the model's width and the widths ``fedmeta tune`` tries: an MLP's
# hidden layers, a conv net's channels (64 channels cost 4x the time of 32 on a CPU).
WIDTH_SETTING: dict[str, tuple[str, tuple[int, ...]]] = {
    "mlp": ("model.hidden", (32, 64, 128)),
    "convnet": ("model.width", (16, 32, 64)),
    "resnet": ("model.width", (16, 32, 64)),
}


def check_meta_trainable(model: nn.Module) -> None:
    """Refuse batch-statistics layers: their second-order gradient under vmap is silently wrong."""
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False) or isinstance(module, nn.modules.batchnorm._NormBase):
            raise FedMetaError(
                f"model: layer {name or type(module).__name__!r} ({type(module).__name__}) uses batch "
                "statistics; use LayerNorm or GroupNorm for meta-learning"
            )


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], seed: int, n_outputs: int = 1) -> nn.Module:
    """The model for examples of ``input_shape`` (``Federation.input_shape``) with a seeded
    initialisation (the same on every process that builds it); ``n_outputs`` is the task's."""
    input_shape = tuple(int(d) for d in input_shape)
    torch.manual_seed(seed)
    if cfg.factory:
        model = build_from_factory(cfg, input_shape, n_outputs, seed)
    else:
        model = MODELS[cfg.kind](cfg, input_shape, n_outputs)
    check_meta_trainable(model)
    return model


def pick_device() -> torch.device:
    """The GPU when one is visible (Ray sets CUDA_VISIBLE_DEVICES per client), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
