"""PicoHead: per-level depthwise towers and one shared cls/box-distribution output conv
per level (picodet-architecture.md §3)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arch import REG_MAX, STRIDES
from .layers import ConvBN


class PicoHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int, kernel_size: int = 5,
                 num_levels: int = len(STRIDES), reg_max: int = REG_MAX, prior_prob: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.towers = nn.ModuleList(
            nn.Sequential(*[
                layer
                for _ in range(num_convs)
                for layer in (ConvBN(channels, channels, kernel_size, groups=channels), ConvBN(channels, channels, 1))
            ])
            for _ in range(num_levels)
        )
        self.outputs = nn.ModuleList(
            nn.Conv2d(channels, num_classes + 4 * (reg_max + 1), 1) for _ in range(num_levels)
        )
        self.init_weights(prior_prob)

    def init_weights(self, prior_prob: float) -> None:
        """Normal(0, 0.01) for every conv; all output biases at the focal prior -log((1-p)/p)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for out in self.outputs:
            nn.init.constant_(out.bias, bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, raw outputs [B, num_classes + 4 * (reg_max + 1), H, W]."""
        return [out(tower(f)) for f, tower, out in zip(feats, self.towers, self.outputs)]
