"""CSP-PAN neck with the extra stride-64 level."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .channels import stacked_prefixes
from .layers import STATIC, ConvBN, DPModule, Layers


class CSPLayer(nn.Module):
    """Cross-stage-partial layer, in 2N -> out N (the input is two N-channel tensors
    concatenated), one depthwise Darknet bottleneck without residual on the main path."""

    def __init__(self, channels: int, kernel_size: int = 5, layers: Layers = STATIC):
        super().__init__()
        hidden = channels // 2
        self.main_conv = ConvBN(2 * channels, hidden, 1, layers=layers)
        self.short_conv = ConvBN(2 * channels, hidden, 1, layers=layers)
        self.bottleneck_conv = ConvBN(hidden, hidden, 1, layers=layers)
        self.bottleneck_dp = DPModule(hidden, kernel_size, layers=layers)
        self.final_conv = ConvBN(2 * hidden, channels, 1, layers=layers)

    def set_active(self, channels: int) -> None:
        """Run width `channels` (hidden `channels // 2`). The input holds two `channels`-wide
        tensors in slots of the largest width, the final conv reads `cat[main, short]` in
        slots of the largest hidden width."""
        hidden = channels // 2
        inputs = stacked_prefixes(channels, self.final_conv.conv.out_channels)
        self.main_conv.set_active(inputs, hidden)
        self.short_conv.set_active(inputs, hidden)
        self.bottleneck_conv.set_active(hidden, hidden)
        self.bottleneck_dp.set_active(hidden)
        self.final_conv.set_active(stacked_prefixes(hidden, self.main_conv.conv.out_channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bottleneck_dp(self.bottleneck_conv(self.main_conv(x)))
        return self.final_conv(torch.cat([main, self.short_conv(x)], dim=1))


class CSPPAN(nn.Module):
    """Top-down then bottom-up path aggregation over C3..C5 reduced to N channels, plus
    P6 = DP(T5) + DP(P5). Outputs P3..P6, all N channels, strides 8..64."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int, kernel_size: int = 5,
                 layers: Layers = STATIC):
        super().__init__()
        n = channels
        self.trans = nn.ModuleList(ConvBN(c, n, 1, layers=layers) for c in in_channels)
        self.top_down = nn.ModuleList(CSPLayer(n, kernel_size, layers) for _ in range(2))  # -> I4, I3
        self.downsample = nn.ModuleList(DPModule(n, kernel_size, 2, layers) for _ in range(2))
        self.bottom_up = nn.ModuleList(CSPLayer(n, kernel_size, layers) for _ in range(2))  # -> P4, P5
        self.extra_in = DPModule(n, kernel_size, 2, layers)  # on T5
        self.extra_out = DPModule(n, kernel_size, 2, layers)  # on P5
        if layers.initialise:
            self.init_weights()

    def init_weights(self) -> None:
        """KaimingUniform (fan_in, ReLU gain): Paddle's init for the neck convs."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")

    def set_active(self, channels: int) -> None:
        """Run every conv of the neck on the first `channels` channels."""
        for conv in self.trans:
            conv.set_active(out_channels=channels)
        for m in (*self.top_down, *self.downsample, *self.bottom_up, self.extra_in, self.extra_out):
            m.set_active(channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        t3, t4, t5 = (conv(f) for conv, f in zip(self.trans, feats))
        i4 = self.top_down[0](torch.cat([F.interpolate(t5, scale_factor=2.0, mode="nearest"), t4], dim=1))
        i3 = self.top_down[1](torch.cat([F.interpolate(i4, scale_factor=2.0, mode="nearest"), t3], dim=1))
        p4 = self.bottom_up[0](torch.cat([self.downsample[0](i3), i4], dim=1))
        p5 = self.bottom_up[1](torch.cat([self.downsample[1](p4), t5], dim=1))
        p6 = self.extra_in(t5) + self.extra_out(p5)
        return [i3, p4, p5, p6]
