"""PicoHead: per-level depthwise towers and one cls/box-distribution output conv per level.

Built of sliceable layers (a supernet's head), it can keep parts of its own for every shallower
tower depth `d < num_convs` (`per_depth`): "outputs", one set of output convs per depth, so the
depths do not read their predictions through shared output convs; "all", the towers too, so a
depth-`d` subnet shares no head weight with another depth. A static network has one of each."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arch import REG_MAX, STRIDES
from .layers import STATIC, ConvBN, Layers

PER_DEPTH = ("none", "outputs", "all")


class PicoHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int, kernel_size: int = 5,
                 num_levels: int = len(STRIDES), reg_max: int = REG_MAX, prior_prob: float = 0.01,
                 layers: Layers = STATIC, per_depth: str = "none"):
        super().__init__()
        if per_depth not in PER_DEPTH:
            raise ValueError(f"per_depth must be one of {PER_DEPTH}, got {per_depth!r}")
        self.num_classes = num_classes
        self.reg_max = reg_max

        def towers(depth: int) -> nn.ModuleList:
            return nn.ModuleList(
                layers.sequential(*[
                    layer
                    for _ in range(depth)
                    for layer in (ConvBN(channels, channels, kernel_size, groups=channels, layers=layers),
                                  ConvBN(channels, channels, 1, layers=layers))
                ])
                for _ in range(num_levels)
            )

        def outputs() -> nn.ModuleList:
            return nn.ModuleList(layers.conv(channels, num_classes + 4 * (reg_max + 1), bias=True)
                                 for _ in range(num_levels))

        self.num_convs = num_convs
        self.per_depth = per_depth
        self.towers = towers(num_convs)
        self.outputs = outputs()
        # shallow_towers[d] / shallow_outputs[d]: the parts of tower depth d < num_convs
        self.shallow_towers = nn.ModuleList(towers(d) for d in range(num_convs)) if per_depth == "all" else None
        self.shallow_outputs = nn.ModuleList(outputs() for _ in range(num_convs)) if per_depth != "none" else None
        self.active_convs = num_convs
        if layers.initialise:
            self.init_weights(prior_prob)

    def init_weights(self, prior_prob: float) -> None:
        """Normal(0, 0.01) for every conv; all output biases at the focal prior -log((1-p)/p)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for out in (o for outputs in (self.outputs, *(self.shallow_outputs or ())) for o in outputs):
            nn.init.constant_(out.bias, bias)

    def parts(self, num_convs: int) -> tuple[nn.ModuleList, nn.ModuleList]:
        """(towers, output convs) that a head of depth `num_convs` runs."""
        shallow = num_convs < self.num_convs
        towers = self.shallow_towers[num_convs] if shallow and self.shallow_towers is not None else self.towers
        outputs = self.shallow_outputs[num_convs] if shallow and self.shallow_outputs is not None else self.outputs
        return towers, outputs

    def set_active(self, channels: int, num_convs: int) -> None:
        """Run width `channels` (towers and output-conv inputs) and the first `num_convs`
        depthwise + pointwise repeats of each tower."""
        towers, outputs = self.parts(num_convs)
        for tower in towers:
            tower.set_active(2 * num_convs)
            repeats = tuple(tower)[:2 * num_convs]
            for dw, pw in zip(repeats[::2], repeats[1::2]):
                dw.set_active(channels)
                pw.set_active(channels, channels)
        for out in outputs:
            out.set_active(in_channels=channels)
        self.active_convs = num_convs

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, raw outputs [B, num_classes + 4 * (reg_max + 1), H, W]."""
        towers, outputs = self.parts(self.active_convs)
        return [out(tower(f)) for f, tower, out in zip(feats, towers, outputs)]
