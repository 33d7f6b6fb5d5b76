"""Batch-norm recalibration of a subnet: give it the BN statistics of its own activations.

A subnet inherits from the supernet BN running statistics that were accumulated over many
different subnets; they do not describe its own activations, and scoring it with them is
meaningless. Before a subnet is evaluated its statistics are recomputed on fixed training
images with `picodet_nas.bn_stats.recalibrate_bn` (exact, as eval mode uses them), the same
function that gives every trained static network its final statistics.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from picodet_nas.arch import Arch
from picodet_nas.bn_stats import recalibrate_bn as _recalibrate


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], num_images: int = 2000,
                   arch: Arch | None = None, *, mode: str = "eval") -> int:
    """`picodet_nas.bn_stats.recalibrate_bn` for a `Supernet` (give `arch` to make that subnet
    active first, else the active one is calibrated) or any static network. The batches must
    be at the subnet's input size. Returns the number of images used."""
    if arch is not None:
        model.set_active(arch)
    return _recalibrate(model, batches, num_images, mode=mode)
