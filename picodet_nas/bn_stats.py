"""BatchNorm statistics recomputed for a network's own weights, the way eval mode uses them.

Running statistics gathered during training describe activations that eval mode never
produces: they are exponential averages over many past weights (and, with the cycle-EMA,
averages of averages), over augmented inputs, and every BN's input was normalised upstream
with the statistics of its own small batch. `recalibrate_bn` replaces them with exact
statistics of the network as it now is, on a fixed set of images.

mode="eval" (the default): BN by BN in forward order, each BN's statistics are those of its
input when every BN before it already normalises with its recomputed statistics, i.e. exactly
the activations eval mode will produce. When all the images fit in one pass (at most
`max_pass_pixels` input pixels, which covers a few hundred images at 320 px), this is one
forward pass in which each BN computes the moments of its whole input and writes them before
normalising with them. Otherwise the images are forwarded in their batches once per BN, each
pass stopping at the BN it measures: exact for any batching, and about half a forward pass
per BN layer slower. The variance written is the population (biased) variance, the one a
training-mode BN normalises with, so eval mode on the calibration images reproduces a
training-mode pass over all of them as a single batch.

mode="train": every BN normalises with its batch statistics while the moments of its input
are pooled over all batches (Chan et al.'s parallel combination, float64; unbiased variance).
This is what OFA and BigNAS do; with small batches it measures inputs that eval mode never
produces and depends on how the images are batched. Kept to compare against.

Only the channels that run are changed: in a supernet, BNs of unused layers and channels
beyond the active ones keep their values. Train/eval mode, momentum and
`num_batches_tracked` are restored.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

RECALIBRATION_MODES = ("eval", "train")
MAX_PASS_PIXELS = 256 * 320 * 320  # input pixels of the one-pass path (bounds its activation memory)


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm module of `model`, in registration order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class ChannelMoments:
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

    def write_to(self, bn: nn.modules.batchnorm._BatchNorm, unbiased: bool) -> None:
        """Set the running statistics of the first `c` channels (those that were seen)."""
        c = self.mean.numel()
        bn.running_mean[:c].copy_(self.mean)
        bn.running_var[:c].copy_(self.m2 / max(self.count - (1 if unbiased else 0), 1))


class _Stop(Exception):
    """Ends a forward pass once the BN being measured has seen its input."""


def _images(batches: Iterable[torch.Tensor], num_images: int, device: torch.device) -> list[torch.Tensor]:
    """The batches on `device`, cut so that exactly `num_images` images are kept (or all there are)."""
    out, left = [], num_images
    for batch in batches:
        if left <= 0:
            break
        if not (isinstance(batch, torch.Tensor) and batch.is_floating_point() and batch.dim() == 4):
            raise TypeError("BN recalibration expects float image batches [B, 3, H, W], got "
                            + (f"a tensor of shape {tuple(batch.shape)} and dtype {batch.dtype}"
                               if isinstance(batch, torch.Tensor) else type(batch).__name__))
        batch = batch[:left].to(device, non_blocking=True)
        left -= batch.shape[0]
        out.append(batch)
    return out


def _chunks(images: list[torch.Tensor], max_pixels: int) -> Iterator[torch.Tensor]:
    """The images as few passes as `max_pixels` allows (same-size batches concatenated)."""
    pending: list[torch.Tensor] = []
    pixels = 0
    for batch in images:
        size = batch.shape[0] * batch.shape[-2] * batch.shape[-1]
        if pending and (pixels + size > max_pixels or batch.shape[-2:] != pending[0].shape[-2:]):
            yield torch.cat(pending)
            pending, pixels = [], 0
        pending.append(batch)
        pixels += size
    if pending:
        yield torch.cat(pending)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], num_images: int = 2000, *,
                   mode: str = "eval", max_pass_pixels: int = MAX_PASS_PIXELS) -> int:
    """Reset the BN running statistics of `model` to the exact statistics over the first
    `num_images` images of `batches` (all of them if there are fewer); see the module's doc.

    batches: normalised float image batches `[B, 3, H, W]` (moved to the model's device).
    Returns the number of images used; a `ValueError` if there were none.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if mode not in RECALIBRATION_MODES:
        raise ValueError(f"mode must be one of {', '.join(RECALIBRATION_MODES)}, got {mode!r}")
    device = next(model.parameters()).device
    images = _images(batches, num_images, device)
    seen = sum(b.shape[0] for b in images)
    if seen == 0:
        raise ValueError("BN recalibration got no images")
    bns = bn_layers(model)
    saved_modes = {m: m.training for m in model.modules()}
    saved_bn = {bn: (bn.momentum, bn.num_batches_tracked.clone()) for bn in bns}
    hooks: list = []
    try:
        for bn in bns:
            bn.momentum = 0.0  # training-mode passes leave the running statistics as they are
        if mode == "train":
            moments = {bn: ChannelMoments() for bn in bns}
            hooks = [bn.register_forward_pre_hook(lambda bn, args: moments[bn].add(args[0])) for bn in bns]
            model.train()
            for batch in images:
                model(batch)
            for bn, m in moments.items():
                if m.count:
                    m.write_to(bn, unbiased=True)
        else:
            model.eval()
            chunks = list(_chunks(images, max_pass_pixels))
            if len(chunks) == 1:
                _one_pass(model, bns, chunks[0])
            else:
                _bn_by_bn(model, bns, images)
    finally:
        for h in hooks:
            h.remove()
        for bn, (momentum, tracked) in saved_bn.items():
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        for m, training in saved_modes.items():
            m.training = training
    return seen


def _one_pass(model: nn.Module, bns: list, images: torch.Tensor) -> None:
    """Eval mode over all images at once; each BN writes its input's moments, then normalises."""
    def measure(bn, args):
        m = ChannelMoments()
        m.add(args[0])
        m.write_to(bn, unbiased=False)

    hooks = [bn.register_forward_pre_hook(measure) for bn in bns]
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()


def _bn_by_bn(model: nn.Module, bns: list, images: list[torch.Tensor]) -> None:
    """Eval mode, one BN at a time in forward order, pooling its input's moments over the batches."""
    order: dict = {}  # insertion-ordered: the BNs in the order the forward pass reaches them
    probe = [bn.register_forward_pre_hook(lambda bn, args: order.setdefault(bn, None)) for bn in bns]
    try:
        model(images[0][:1])
    finally:
        for h in probe:
            h.remove()
    for bn in order:
        moments = ChannelMoments()

        def measure(module, args, moments=moments):
            moments.add(args[0])
            raise _Stop

        hook = bn.register_forward_pre_hook(measure)
        try:
            for batch in images:
                try:
                    model(batch)
                except _Stop:
                    pass
        finally:
            hook.remove()
        moments.write_to(bn, unbiased=False)
