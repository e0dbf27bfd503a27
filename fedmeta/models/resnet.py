"""A small ResNet (He et al. 2016) for small medical images: three stages of basic blocks with
GroupNorm (no batch statistics: see ``check_meta_trainable``), global average pooling, a linear head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedmeta.config import ModelConfig
from fedmeta.models.convnet import group_norm, image_shape

__all__ = ["ResNet", "build_resnet"]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = group_norm(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), group_norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem (3×3 conv, ``width`` channels), stages of ``blocks`` basic blocks at ``width``, 2·``width``
    and 4·``width`` channels (the last two halve the resolution), average pooling, a linear head."""

    def __init__(self, input_shape: tuple[int, int, int], width: int = 32, blocks: int = 2, n_outputs: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False), group_norm(width),
                                   nn.ReLU()]
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage and b == 0 else 1))
                c_in = c_out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x))
        return out.squeeze(-1) if self.n_outputs == 1 else out


def build_resnet(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return ResNet(image_shape(input_shape, "resnet"), cfg.width, cfg.blocks, n_outputs)
