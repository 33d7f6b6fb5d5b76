"""ESNet backbone (legacy PP-PicoDet)."""

from __future__ import annotations

import torch
from torch import nn

from ..arch import NUM_BLOCKS, STEM_CHANNELS, Arch, block_is_downsample, block_stage
from .channels import stacked_prefixes
from .layers import STATIC, ConvBN, Layers, SqueezeExcite, channel_shuffle


class ESBlock(nn.Module):
    """Stride-1 ES block: half the channels pass through; the other half goes through a
    ghost-style expansion (pointwise, then depthwise on its output, both concatenated),
    SE, and a pointwise projection; then channel shuffle."""

    def __init__(self, channels: int, mid: int, kernel_size: int = 3, layers: Layers = STATIC):
        super().__init__()
        half, mid_half = channels // 2, mid // 2
        self.pw = ConvBN(half, mid_half, 1, layers=layers)
        self.dw = ConvBN(mid_half, mid_half, kernel_size, groups=mid_half, act=False, layers=layers)
        self.se = SqueezeExcite(mid, layers=layers)
        self.linear = ConvBN(mid, half, 1, layers=layers)

    def set_active(self, mid: int, kernel_size: int) -> None:
        """Run `mid` channels and the depthwise `kernel_size`. The SE and the final 1x1 conv
        read `cat[a, dw(a)]`, each `mid / 2` of a slot of the largest block's `mid / 2`."""
        mid_half = mid // 2
        both = stacked_prefixes(mid_half, self.pw.conv.out_channels)
        self.pw.set_active(out_channels=mid_half)
        self.dw.set_active(mid_half, kernel_size=kernel_size)
        self.se.set_active(both)
        self.linear.set_active(in_channels=both)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        a = self.pw(x2)
        y = torch.cat([a, self.dw(a)], dim=1)
        y = self.linear(self.se(y))
        return channel_shuffle(torch.cat([x1, y], dim=1), 2)


class ESBlockDS(nn.Module):
    """Stride-2 ES block: two branches (depthwise-separable; pointwise-depthwise-SE-pointwise)
    concatenated and fused by a depthwise + pointwise pair with hard-swish. No shuffle."""

    def __init__(self, cin: int, cout: int, mid: int, kernel_size: int = 3, layers: Layers = STATIC):
        super().__init__()
        half, mid_half = cout // 2, mid // 2
        self.dw1 = ConvBN(cin, cin, kernel_size, 2, groups=cin, act=False, layers=layers)
        self.linear1 = ConvBN(cin, half, 1, layers=layers)
        self.pw2 = ConvBN(cin, mid_half, 1, layers=layers)
        self.dw2 = ConvBN(mid_half, mid_half, kernel_size, 2, groups=mid_half, act=False, layers=layers)
        self.se = SqueezeExcite(mid_half, layers=layers)
        self.linear2 = ConvBN(mid_half, half, 1, layers=layers)
        self.dw_mv1 = ConvBN(cout, cout, kernel_size, groups=cout, layers=layers)
        self.pw_mv1 = ConvBN(cout, cout, 1, layers=layers)

    def set_active(self, mid: int, kernel_size: int) -> None:
        """Run `mid` channels (branch 2) and `kernel_size` in all three depthwise convs."""
        mid_half = mid // 2
        self.dw1.set_active(kernel_size=kernel_size)
        self.pw2.set_active(out_channels=mid_half)
        self.dw2.set_active(mid_half, kernel_size=kernel_size)
        self.se.set_active(mid_half)
        self.linear2.set_active(in_channels=mid_half)
        self.dw_mv1.set_active(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.linear1(self.dw1(x))
        b2 = self.linear2(self.se(self.dw2(self.pw2(x))))
        return self.pw_mv1(self.dw_mv1(torch.cat([b1, b2], dim=1)))


class Stem(nn.Module):
    def __init__(self, channels: int = STEM_CHANNELS, layers: Layers = STATIC):
        super().__init__()
        self.conv = ConvBN(3, channels, 3, 2, layers=layers)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def build_block(arch: Arch, i: int, layers: Layers = STATIC) -> nn.Module:
    """Block `i` of the backbone for this `arch`."""
    c = arch.stage_out_channels
    stage = block_stage(i)
    if block_is_downsample(i):
        cin = STEM_CHANNELS if stage == 0 else c[stage - 1]
        return ESBlockDS(cin, c[stage], arch.mid_channels[i], arch.kernel_size[i], layers)
    return ESBlock(c[stage], arch.mid_channels[i], arch.kernel_size[i], layers)


OUT_BLOCKS = (2, 9, 12)  # outputs of blocks 2_3, 3_7, 4_3: C3, C4, C5 at strides 8, 16, 32


class ESNet(nn.Module):
    def __init__(self, arch: Arch, layers: Layers = STATIC):
        super().__init__()
        self.out_channels = arch.stage_out_channels
        self.stem = Stem(layers=layers)
        self.blocks = nn.ModuleList(build_block(arch, i, layers) for i in range(NUM_BLOCKS))
        if layers.initialise:
            self.init_weights()

    def init_weights(self) -> None:
        """KaimingNormal for convs; SE convs keep PyTorch's default init (with bias)."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_in", nonlinearity="relu")

    def set_active(self, arch: Arch) -> None:
        """Run `arch`'s mid widths and kernels (the stage widths are fixed)."""
        for block, mid, k in zip(self.blocks, arch.mid_channels, arch.kernel_size):
            block.set_active(mid, k)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in OUT_BLOCKS:
                outs.append(x)
        return outs
