"""PicoHead: per-level depthwise towers and one cls/box-distribution output conv per level.

Built of sliceable layers with `depth_outputs=True` (a supernet's head), it also holds one set of
output convs for every shallower tower depth: a subnet of depth `d` reads its outputs from the
set of its own depth, so the output convs of different depths are not forced to share weights
that read different features (a static network has one set, `outputs`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arch import REG_MAX, STRIDES
from .layers import STATIC, ConvBN, Layers


class PicoHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int, kernel_size: int = 5,
                 num_levels: int = len(STRIDES), reg_max: int = REG_MAX, prior_prob: float = 0.01,
                 layers: Layers = STATIC, depth_outputs: bool = False):
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

        def output_set() -> nn.ModuleList:
            return nn.ModuleList(layers.conv(channels, num_classes + 4 * (reg_max + 1), bias=True)
                                 for _ in range(num_levels))

        self.num_convs = num_convs
        self.outputs = output_set()  # read by the full depth (and by every depth without depth_outputs)
        # shallow_outputs[d]: the output convs of tower depth d < num_convs
        self.shallow_outputs = nn.ModuleList(output_set() for _ in range(num_convs)) if depth_outputs else None
        self.active_convs = num_convs
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
        for out in (o for outputs in self.shallow_outputs or () for o in outputs):
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
        self.active_convs = num_convs
        for out in self.output_set(num_convs):
            out.set_active(in_channels=channels)

    def output_set(self, num_convs: int) -> nn.ModuleList:
        """The output convs a tower of depth `num_convs` reads from."""
        if self.shallow_outputs is None or num_convs == self.num_convs:
            return self.outputs
        return self.shallow_outputs[num_convs]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, raw outputs [B, num_classes + 4 * (reg_max + 1), H, W]."""
        return [out(tower(f)) for f, tower, out in zip(feats, self.towers, self.output_set(self.active_convs))]
