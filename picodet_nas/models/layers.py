"""Building blocks shared by ESNet, CSP-PAN and PicoHead."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm + optional hard-swish, padding (k - 1) / 2.

    BN keeps PyTorch's momentum 0.1 / eps 1e-5, the equivalent of Paddle's defaults.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.Hardswish() if act else nn.Identity()

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

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * s


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DPModule(nn.Module):
    """Depthwise k x k ConvBN + act, then pointwise ConvBN + act (CSP-PAN's separable conv)."""

    def __init__(self, channels: int, kernel_size: int = 5, stride: int = 1):
        super().__init__()
        self.dw = ConvBN(channels, channels, kernel_size, stride, groups=channels)
        self.pw = ConvBN(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))
