"""The 4-block conv backbone of the few-shot literature (Vinyals et al. 2016; Finn et al. 2017), with
GroupNorm instead of BatchNorm: batch statistics make vmapped second-order MAML silently wrong."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedmeta.config import ModelConfig
from fedmeta.errors import FedMetaError

__all__ = ["ConvNet", "build_convnet", "group_norm", "image_shape"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels`` (per-example statistics only), each of
    at least 2 channels: a group of one channel on a 1x1 map would normalise every value to 0."""
    groups = math.gcd(8, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def image_shape(input_shape: tuple[int, ...], kind: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise FedMetaError(f"model.kind = \"{kind}\" takes images (channels, height, width); this data has examples "
                           f"of shape {input_shape} (use model.kind = \"mlp\" for a table)")
    return input_shape  # type: ignore[return-value]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # ceil_mode: an image already pooled down to 1 pixel stays 1 pixel, so any size >= 1 works.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), group_norm(c_out), nn.ReLU(),
                         nn.MaxPool2d(2, ceil_mode=True))


class ConvNet(nn.Module):
    """Four [3×3 conv → GroupNorm → ReLU → 2×2 max-pool] blocks of ``width`` channels, a linear head.
    One output is returned as ``(n,)``, K outputs as ``(n, K)``."""

    def __init__(self, input_shape: tuple[int, int, int], width: int = 32, n_outputs: int = 1):
        super().__init__()
        channels, height, width_px = input_shape
        self.body = nn.Sequential(*[_block(channels if i == 0 else width, width) for i in range(4)], nn.Flatten())
        for _ in range(4):
            height, width_px = math.ceil(height / 2), math.ceil(width_px / 2)
        self.head = nn.Linear(width * height * width_px, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x))
        return out.squeeze(-1) if self.n_outputs == 1 else out


def build_convnet(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return ConvNet(image_shape(input_shape, "convnet"), cfg.width, n_outputs)
