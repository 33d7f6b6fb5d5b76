"""Batch-norm recalibration: give a subnet the BN running statistics of its own activations.

A subnet inherits from the supernet BN running statistics that were accumulated over many
different subnets; they do not describe its own activations, and scoring it with them is
meaningless. Before a subnet is evaluated, its statistics are recomputed on a few
thousand training images (as in OFA and BigNAS).

`recalibrate_bn` forwards the images in training mode (each BN normalises with its batch
statistics, as during training) without gradients, and sets every BN's running mean and
variance to the *exact* mean and (unbiased) variance of its input over all pixels of all the
images, pooled across batches (Chan et al.'s parallel combination, in float64), not an
exponential average and not an average of per-batch variances: the result does not depend on
how the images are batched, only on which images they are. Only the channels a subnet uses
change: in a supernet, BNs of unused layers and channels beyond the active ones keep their
values. Everything else (train/eval mode, momentum, `num_batches_tracked`) is restored.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from picodet_nas.arch import Arch


class _ChannelMoments:
    """Per-channel count, mean and sum of squared deviations of the tensors it is shown."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        n = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x.detach().float(), dim=(0, 2, 3), unbiased=False)
        mean, m2 = mean.double(), var.double() * n
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def write_to(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """Set the running statistics of the first `c` channels (those that were seen)."""
        c = self.mean.numel()
        bn.running_mean[:c].copy_(self.mean)
        bn.running_var[:c].copy_(self.m2 / max(self.count - 1, 1))


def _images(batches: Iterable[torch.Tensor], num_images: int) -> Iterable[torch.Tensor]:
    """The batches, cut so that exactly `num_images` images are yielded (or all there are)."""
    left = num_images
    for batch in batches:
        if left <= 0:
            return
        if not (isinstance(batch, torch.Tensor) and batch.is_floating_point() and batch.dim() == 4):
            raise TypeError("BN recalibration expects float image batches [B, 3, H, W], got "
                            + (f"a tensor of shape {tuple(batch.shape)} and dtype {batch.dtype}"
                               if isinstance(batch, torch.Tensor) else type(batch).__name__))
        batch = batch[:left]
        left -= batch.shape[0]
        yield batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], num_images: int = 2000,
                   arch: Arch | None = None, input_size: int | None = None) -> int:
    """Reset the BN running statistics of `model` to the exact statistics over the first
    `num_images` images of `batches` (all of them if there are fewer).

    model:      a `Supernet` (give `arch` to make that subnet active first, else the active
                one is calibrated) or any static network such as `PicoDet`.
    batches:    an iterable of normalised float image batches `[B, 3, H, W]`; moved to the
                model's device.
    input_size: when given, every batch is resized (bilinear) to `input_size x input_size`,
                e.g. to calibrate a subnet at its own input size from one cached set.

    Returns the number of images used; a `ValueError` if there were none.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if arch is not None:
        model.set_active(arch)
    device = next(model.parameters()).device
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    moments = {bn: _ChannelMoments() for bn in bns}
    saved_modes = {m: m.training for m in model.modules()}
    saved_bn = {bn: (bn.momentum, bn.num_batches_tracked.clone()) for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda bn, args: moments[bn].add(args[0])) for bn in bns]
    seen = 0
    try:
        for bn in bns:
            bn.momentum = 0.0  # the passes leave the running statistics as they are
        model.train()
        for batch in _images(batches, num_images):
            batch = batch.to(device, non_blocking=True)
            if input_size is not None and tuple(batch.shape[-2:]) != (input_size, input_size):
                batch = F.interpolate(batch, size=(input_size, input_size), mode="bilinear", align_corners=False)
            model(batch)
            seen += batch.shape[0]
        if seen == 0:
            raise ValueError("BN recalibration got no images")
        for bn, m in moments.items():
            if m.count:
                m.write_to(bn)
    finally:
        for h in hooks:
            h.remove()
        for bn, (momentum, tracked) in saved_bn.items():
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        for m, mode in saved_modes.items():
            m.training = mode
    return seen
