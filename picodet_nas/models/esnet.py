"""ESNet backbone (legacy PP-PicoDet, picodet-architecture.md §1)."""

from __future__ import annotations

import torch
from torch import nn

from ..arch import NUM_BLOCKS, STEM_CHANNELS, Arch, block_is_downsample, block_stage
from .layers import ConvBN, SqueezeExcite, channel_shuffle


class ESBlock(nn.Module):
    """Stride-1 ES block: half the channels pass through; the other half goes through a
    ghost-style expansion (pointwise, then depthwise on its output, both concatenated),
    SE, and a pointwise projection; then channel shuffle."""

    def __init__(self, channels: int, mid: int, kernel_size: int = 3):
        super().__init__()
        half, mid_half = channels // 2, mid // 2
        self.pw = ConvBN(half, mid_half, 1)
        self.dw = ConvBN(mid_half, mid_half, kernel_size, groups=mid_half, act=False)
        self.se = SqueezeExcite(mid)
        self.linear = ConvBN(mid, half, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        a = self.pw(x2)
        y = torch.cat([a, self.dw(a)], dim=1)
        y = self.linear(self.se(y))
        return channel_shuffle(torch.cat([x1, y], dim=1), 2)


class ESBlockDS(nn.Module):
    """Stride-2 ES block: two branches (depthwise-separable; pointwise-depthwise-SE-pointwise)
    concatenated and fused by a depthwise + pointwise pair with hard-swish. No shuffle."""

    def __init__(self, cin: int, cout: int, mid: int, kernel_size: int = 3):
        super().__init__()
        half, mid_half = cout // 2, mid // 2
        self.dw1 = ConvBN(cin, cin, kernel_size, 2, groups=cin, act=False)
        self.linear1 = ConvBN(cin, half, 1)
        self.pw2 = ConvBN(cin, mid_half, 1)
        self.dw2 = ConvBN(mid_half, mid_half, kernel_size, 2, groups=mid_half, act=False)
        self.se = SqueezeExcite(mid_half)
        self.linear2 = ConvBN(mid_half, half, 1)
        self.dw_mv1 = ConvBN(cout, cout, kernel_size, groups=cout)
        self.pw_mv1 = ConvBN(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.linear1(self.dw1(x))
        b2 = self.linear2(self.se(self.dw2(self.pw2(x))))
        return self.pw_mv1(self.dw_mv1(torch.cat([b1, b2], dim=1)))


class Stem(nn.Module):
    def __init__(self, channels: int = STEM_CHANNELS):
        super().__init__()
        self.conv = ConvBN(3, channels, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def build_block(arch: Arch, i: int) -> nn.Module:
    """Block `i` of the backbone as the static module for this `arch`."""
    c = arch.stage_out_channels
    stage = block_stage(i)
    if block_is_downsample(i):
        cin = STEM_CHANNELS if stage == 0 else c[stage - 1]
        return ESBlockDS(cin, c[stage], arch.mid_channels[i], arch.kernel_size[i])
    return ESBlock(c[stage], arch.mid_channels[i], arch.kernel_size[i])


OUT_BLOCKS = (2, 9, 12)  # outputs of blocks 2_3, 3_7, 4_3: C3, C4, C5 at strides 8, 16, 32


class ESNet(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        self.out_channels = arch.stage_out_channels
        self.stem = Stem()
        self.blocks = nn.ModuleList(build_block(arch, i) for i in range(NUM_BLOCKS))
        self.init_weights()

    def init_weights(self) -> None:
        """KaimingNormal for convs; SE convs keep PyTorch's default init (with bias)."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in OUT_BLOCKS:
                outs.append(x)
        return outs
