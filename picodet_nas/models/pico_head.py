"""PicoHead: per-level depthwise towers and one shared cls/box-distribution output conv
per level."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arch import REG_MAX, STRIDES
from .layers import STATIC, ConvBN, Layers


class PicoHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int, kernel_size: int = 5,
                 num_levels: int = len(STRIDES), reg_max: int = REG_MAX, prior_prob: float = 0.01,
                 layers: Layers = STATIC):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.towers = nn.ModuleList(
            layers.sequential(*[
                layer
                for _ in range(num_convs)
                for layer in (ConvBN(channels, channels, kernel_size, groups=channels, layers=layers),
                              ConvBN(channels, channels, 1, layers=layers))
            ])
            for _ in range(num_levels)
        )
        self.outputs = nn.ModuleList(
            layers.conv(channels, num_classes + 4 * (reg_max + 1), bias=True) for _ in range(num_levels)
        )
        if layers.initialise:
            self.init_weights(prior_prob)

    def init_weights(self, prior_prob: float) -> None:
        """Normal(0, 0.01) for every conv; all output biases at the focal prior -log((1-p)/p)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for out in self.outputs:
            nn.init.constant_(out.bias, bias)

    def set_active(self, channels: int, num_convs: int) -> None:
        """Run width `channels` (towers and output-conv inputs) and the first `num_convs`
        depthwise + pointwise repeats of each tower."""
        for tower in self.towers:
            tower.set_active(2 * num_convs)
            repeats = tuple(tower)[:2 * num_convs]
            for dw, pw in zip(repeats[::2], repeats[1::2]):
                dw.set_active(channels)
                pw.set_active(channels, channels)
        for out in self.outputs:
            out.set_active(in_channels=channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, raw outputs [B, num_classes + 4 * (reg_max + 1), H, W]."""
        return [out(tower(f)) for f, tower, out in zip(feats, self.towers, self.outputs)]
