"""Shared test helpers."""

from __future__ import annotations

import random

import torch

from picodet_nas.arch import NUM_BLOCKS, Arch

RATIOS = (0.5, 0.625, 0.75, 0.875, 1.0)


def random_arch(rng: random.Random, input_sizes=(128, 160, 192, 224, 256)) -> Arch:
    """Any valid Arch, wider than the spaces: all three scales, kernels 3/5/7, neck and head choices."""
    return Arch(
        scale=rng.choice((0.5, 0.75, 1.0, 1.25)),
        channel_ratio=tuple(rng.choice(RATIOS) for _ in range(NUM_BLOCKS)),
        kernel_size=tuple(rng.choice((3, 5, 7)) for _ in range(NUM_BLOCKS)),
        neck_channels=rng.choice((32, 64, 96, 128)),
        head_convs=rng.choice((0, 1, 2, 3, 4)),
        input_size=rng.choice(input_sizes),
    )


def make_realistic(model: torch.nn.Module, size: int, seed: int = 0) -> torch.nn.Module:
    """Make a freshly initialised detector numerically like a trained one: BN statistics
    taken from data, tower weights at a trained scale, and a spread of output scores (a fresh
    net scores nearly every prior alike, so detections would tie)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.head.towers.modules():  # Normal(0, 0.01) towers feed BN a near-zero variance
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    nc = model.num_classes
    for out in model.head.outputs:
        out.weight.data[:nc].normal_(0.0, 0.03, generator=g)  # class logits: spread the scores
        out.weight.data[nc:].normal_(0.0, 0.01, generator=g)  # box bins: the published init
        out.bias.data.uniform_(-4.0, -2.0, generator=g)
    with torch.no_grad():
        model.train()(structured_images(8, size, generator=g))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def structured_images(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images with structure at every scale (uniform noise averages out in deep layers, which
    makes every image look alike there): smooth random fields plus fine noise."""
    out = torch.zeros(n, 3, size, size)
    for cells in (2, 4, 8, 16):
        field = torch.rand(n, 3, cells, cells, generator=generator)
        out += torch.nn.functional.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)
    return (out / 4 + 0.25 * torch.rand(n, 3, size, size, generator=generator) - 0.5) * 2
