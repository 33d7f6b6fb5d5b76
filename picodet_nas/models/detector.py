"""PicoDet = ESNet + CSP-PAN + PicoHead, built from an `Arch`."""

from __future__ import annotations

import torch
from torch import nn

from ..arch import REG_MAX, STRIDES, Arch
from ..ops.boxes import make_priors
from .csp_pan import CSPPAN
from .esnet import ESNet
from .layers import STATIC, Layers
from .pico_head import PicoHead

NECK_KERNEL = 5
HEAD_KERNEL = 5


class PicoDet(nn.Module):
    """The detector. `forward` returns the raw per-level outputs; `flatten` turns them into
    the [B, N, ...] tensors that the loss, the assigner and the post-processing use.

    Built of sliceable `layers` (the supernet's), it is the largest network of a search space
    and `set_active(arch)` makes it run the subnet `arch` of it."""

    strides = STRIDES
    reg_max = REG_MAX

    def __init__(self, arch: Arch, num_classes: int = 80, layers: Layers = STATIC, per_depth: str = "none"):
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = ESNet(arch, layers)
        self.neck = CSPPAN(arch.stage_out_channels, arch.neck_channels, NECK_KERNEL, layers)
        self.head = PicoHead(arch.neck_channels, num_classes, arch.head_convs, HEAD_KERNEL, layers=layers,
                             per_depth=per_depth)

    def set_active(self, arch: Arch) -> None:
        """Run the subnet `arch` (a network built of sliceable layers only)."""
        self.backbone.set_active(arch)
        self.neck.set_active(arch.neck_channels)
        self.head.set_active(arch.neck_channels, arch.head_convs)
        self.arch = arch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.neck(self.backbone(x)))

    def flatten(self, outs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cls_logits [B, N, C], reg_logits [B, N, 4 * (reg_max + 1)], priors [N, 4])."""
        return flatten_outputs(outs, self.num_classes)


def flatten_outputs(outs: list[torch.Tensor], num_classes: int, strides=STRIDES):
    flat = torch.cat([o.flatten(2) for o in outs], dim=2).transpose(1, 2)  # [B, N, C + 32]
    priors = make_priors([tuple(o.shape[-2:]) for o in outs], strides, device=flat.device, dtype=flat.dtype)
    return flat[..., :num_classes], flat[..., num_classes:], priors


def build_model(arch: Arch, num_classes: int = 80) -> PicoDet:
    return PicoDet(arch, num_classes)
