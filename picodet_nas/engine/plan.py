"""What one training step runs: the caller's `StepPlan` says which network(s), the engine runs
them on the step's batch and accumulates their gradients before the one optimiser step.

* a static model (`nas retrain`): `StaticPlan`, one pass of the model itself per step;
* a supernet (`nas train-supernet`): `supernet.train.SupernetPlan`, the `SubnetSampler`'s
  subnets of the step (uniform: one; sandwich: largest + smallest + n random), each at its
  own input size.

Multi-scale training draws one size per batch around `base_input_size` (e.g. 320 -> 256..384).
A pass whose network has another nominal input size sees the batch resized by the same
offset (a 224 subnet gets 192 when a 192-base batch came out at 160), so each subnet trains
on its own size distribution; boxes are scaled with the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch.nn import functional as F

from ..arch import Arch


@dataclass(frozen=True)
class NetworkPass:
    """One forward/backward of a step.

    arch:       the subnet to run, passed to the model as `model(images, arch)`; None runs
                the model as it is (`model(images)`, a static network).
    input_size: the network's nominal input size.
    """

    arch: Arch | None
    input_size: int


class StepPlan(Protocol):
    """Which networks each step trains. `networks(step)` must be a pure function of the step
    (and of seeds fixed at construction), so that every DDP rank and a resumed run agree."""

    base_input_size: int
    find_unused_parameters: bool  # DDP: some parameters get no gradient in some steps

    def networks(self, step: int) -> Sequence[NetworkPass]: ...


class StaticPlan:
    """A static network: one pass of the whole model per step."""

    find_unused_parameters = False

    def __init__(self, input_size: int):
        self.base_input_size = input_size

    def networks(self, step: int) -> list[NetworkPass]:
        return [NetworkPass(None, self.base_input_size)]


def pass_size(batch_size_px: int, base_input_size: int, network_size: int) -> int:
    """The size a network sees: its nominal size plus the batch's multi-scale offset."""
    return max(32, network_size + batch_size_px - base_input_size)


def resize_batch(images: torch.Tensor, boxes: Sequence[torch.Tensor], size: int
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Square batch `images` [B, 3, S, S] and its xyxy boxes, resized to `size` (bilinear,
    antialiased when shrinking)."""
    current = images.shape[-1]
    if size == current:
        return images, list(boxes)
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=size < current)
    scale = size / current
    return resized, [b * scale for b in boxes]
