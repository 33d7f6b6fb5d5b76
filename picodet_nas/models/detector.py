"""PicoDet = ESNet + CSP-PAN + PicoHead, built from an `Arch`."""

from __future__ import annotations

import torch
from torch import nn

from ..arch import REG_MAX, STRIDES, Arch
from ..ops.boxes import make_priors
from .csp_pan import CSPPAN
from .esnet import ESNet
from .pico_head import PicoHead

NECK_KERNEL = 5
HEAD_KERNEL = 5


class PicoDet(nn.Module):
    """The detector. `forward` returns the raw per-level outputs; `flatten` turns them into
    the [B, N, ...] tensors that the loss, the assigner and the post-processing use."""

    strides = STRIDES
    reg_max = REG_MAX

    def __init__(self, arch: Arch, num_classes: int = 80):
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = ESNet(arch)
        self.neck = CSPPAN(arch.stage_out_channels, arch.neck_channels, NECK_KERNEL)
        self.head = PicoHead(arch.neck_channels, num_classes, arch.head_convs, HEAD_KERNEL)

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
