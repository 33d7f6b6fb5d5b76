"""The random streams of the data pipeline, each keyed by its own tag, and the fixed subsets
drawn from them.

Every RNG key starts with a non-zero stream tag: numpy's SeedSequence pads short keys with
zeros, so [seed, epoch] and [seed, epoch, 0, 0] would otherwise be the same stream. The tags
live here together so that no two uses share one.
"""

from __future__ import annotations

import numpy as np

ORDER_STREAM = 1  # an epoch's sample order: (seed, epoch)
SAMPLE_STREAM = 2  # a training sample's augmentation: (seed, epoch, dataset index)
BATCH_STREAM = 3  # a training batch's size and interpolation: (seed, epoch, batch number)
SUBSET_STREAM = 4  # the fixed subsets of the decode-once caches: (seed,)
SPLIT_STREAM = 5  # the images the search split holds out: (seed,)


def stream(tag: int, *key: int) -> np.random.Generator:
    """The generator of stream `tag` for `key`."""
    return np.random.default_rng([tag, *key])


def sorted_choice(tag: int, seed: int, num_images: int, count: int) -> list[int]:
    """`count` distinct indices of range(num_images), drawn from stream `tag` of `seed`, sorted."""
    chosen = stream(tag, seed).choice(num_images, size=count, replace=False)
    return sorted(int(i) for i in chosen)


def fixed_subset(num_images: int, count: int | None, seed: int) -> list[int]:
    """A sorted, seed-determined subset of `count` indices; all of them when count is None or too large."""
    if count is None or count >= num_images:
        return list(range(num_images))
    return sorted_choice(SUBSET_STREAM, seed, num_images, count)
