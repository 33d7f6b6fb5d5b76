"""Building blocks shared by ESNet, CSP-PAN and PicoHead, and the primitive layers they are
built of.

Every block is defined once. It builds its convolutions, batch norms and sequences through a
`Layers` set: `STATIC` (PyTorch's own layers) gives the networks of `build_model`; the
supernet passes sliceable layers with the same signatures, which hold the weights of the
largest configuration and run a slice of them. A block's `set_active(...)`, next to its
constructor, chooses that slice (the channels and kernel each layer runs, as channel sets of
`channels.py`); it applies to blocks built of sliceable layers only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from .channels import Channels, as_ranges, width


def conv2d(cin: int, cout: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
           bias: bool = False) -> nn.Conv2d:
    """A convolution with padding (k - 1) / 2."""
    return nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias)


class Layers(NamedTuple):
    """The primitive layers of a network.

    conv:       `conv2d`'s signature (padding (k - 1) / 2; groups 1, or one per channel);
    bn:         a `BatchNorm2d` of that many channels;
    sequential: an `nn.Sequential` of the given layers;
    initialise: whether the network draws its own initial weights (the supernet copies the
                static builder's instead, so it leaves PyTorch's defaults in place).
    """

    conv: Callable[..., nn.Conv2d]
    bn: Callable[[int], nn.BatchNorm2d]
    sequential: Callable[..., nn.Sequential]
    initialise: bool


STATIC = Layers(conv2d, nn.BatchNorm2d, nn.Sequential, initialise=True)


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm + optional hard-swish, padding (k - 1) / 2.

    BN keeps PyTorch's momentum 0.1 / eps 1e-5, the equivalent of Paddle's defaults.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True,
                 layers: Layers = STATIC):
        super().__init__()
        self.conv = layers.conv(cin, cout, kernel_size, stride, groups)
        self.bn = layers.bn(cout)
        self.act = nn.Hardswish() if act else nn.Identity()

    def set_active(self, in_channels: Channels | None = None, out_channels: Channels | None = None,
                   kernel_size: int | None = None) -> None:
        """The conv's slice (`None`: a dimension at its largest; a depthwise conv takes
        `in_channels` only); the BN runs the conv's output channels, which must be a prefix."""
        self.conv.set_active(in_channels, out_channels, kernel_size)
        out = self.conv.active_out
        if len(out) != 1 or out[0][0] != 0:
            raise ValueError(f"a ConvBN's output channels must be a prefix, got {out}")
        self.bn.set_active(width(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


HARD_SIGMOID_SLOPE = 0.16666670143604279  # Paddle's slope 0.1666667, as its float32 attribute holds it


class _HardSigmoidOp(torch.autograd.Function):
    """Emits ONNX `HardSigmoid` with Paddle's slope while exporting; never runs eagerly."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def symbolic(g, x):
        return g.op("HardSigmoid", x, alpha_f=HARD_SIGMOID_SLOPE, beta_f=0.5)


class HardSigmoid(nn.Module):
    """Paddle's hard sigmoid, `clip(0.1666667 x + 0.5, 0, 1)`, the gate of ESNet's SE.

    PyTorch's `nn.Hardsigmoid` has a slope of exactly 1/6. The difference, 1.8e-7 relative
    (a float32 ulp or two), hides under float32 rounding, but with both networks computing in
    float64 it was the largest difference between this ESNet and PaddleDetection's. The
    slope is the float32 value Paddle's operator attribute holds. Exported to ONNX as one
    `HardSigmoid` op with that slope.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return _HardSigmoidOp.apply(x)
        return torch.clamp(x * HARD_SIGMOID_SLOPE + 0.5, 0.0, 1.0)


class SqueezeExcite(nn.Module):
    """SE with reduction 4: pool, 1x1 (bias) + ReLU, 1x1 (bias) + hard-sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 4, layers: Layers = STATIC):
        super().__init__()
        self.reduction = reduction
        hidden = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = layers.conv(channels, hidden, bias=True)
        self.relu = nn.ReLU()
        self.expand = layers.conv(hidden, channels, bias=True)
        self.gate = HardSigmoid()

    def set_active(self, channels: Channels | None = None) -> None:
        """Run on `channels` (`None`: all); for `c` of them the hidden width is the first
        `c // reduction`, as the SE of `c` channels has."""
        largest = self.reduce.in_channels
        ranges = as_ranges(largest if channels is None else channels, largest)
        hidden = width(ranges) // self.reduction
        self.reduce.set_active(ranges, hidden)
        self.expand.set_active(hidden, ranges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * s


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DPModule(nn.Module):
    """Depthwise k x k ConvBN + act, then pointwise ConvBN + act (CSP-PAN's separable conv)."""

    def __init__(self, channels: int, kernel_size: int = 5, stride: int = 1, layers: Layers = STATIC):
        super().__init__()
        self.dw = ConvBN(channels, channels, kernel_size, stride, groups=channels, layers=layers)
        self.pw = ConvBN(channels, channels, 1, layers=layers)

    def set_active(self, channels: int) -> None:
        """Run the first `channels` channels (the kernel is fixed)."""
        self.dw.set_active(channels)
        self.pw.set_active(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))
