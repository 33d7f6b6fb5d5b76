"""Channel sets: which channels of a layer's largest layout a subnet runs on.

A block built of sliceable layers (the supernet's) holds the weights of its largest
configuration; `set_active(...)` chooses the channels each layer runs on. Activations are
compact (a subnet with 40 mid channels carries 40-channel tensors), but the channels they hold
are not always a prefix of the largest layout: a layer that reads the concatenation of two
elastic tensors sees two prefixes. In a stride-1 ES block the SE and the final 1x1 conv read
`cat[a, b]` with `a`, `b` of `m/2` channels each, i.e. channels `[0, m/2) U [M/2, M/2 + m/2)`
of the largest (`M`) layout. A channel set is therefore a tuple of half-open ranges in the
largest layout (`Ranges`); an integer `n` means the prefix `[0, n)`.
"""

from __future__ import annotations

from typing import Union

Ranges = tuple[tuple[int, int], ...]
Channels = Union[int, Ranges]  # an int n is the prefix [0, n)


def prefix(n: int) -> Ranges:
    """The first `n` channels."""
    return ((0, n),)


def stacked_prefixes(n: int, max_n: int, parts: int = 2) -> Ranges:
    """The channels of `parts` tensors of `n` active channels each, concatenated, where each
    tensor occupies a slot of `max_n` channels in the largest layout:
    `[0, n) U [max_n, max_n + n) U ...`."""
    return tuple((p * max_n, p * max_n + n) for p in range(parts))


def as_ranges(channels: Channels, max_channels: int) -> Ranges:
    """Normalise a channel set: an int is a prefix; adjacent ranges are merged; every range
    must be non-empty, in order, and inside `[0, max_channels)`."""
    if isinstance(channels, int):
        channels = prefix(channels)
    merged: list[list[int]] = []
    for start, stop in channels:
        if not 0 <= start < stop <= max_channels or (merged and start < merged[-1][1]):
            raise ValueError(f"invalid channel set {tuple(channels)} for a layer of {max_channels} channels")
        if merged and start == merged[-1][1]:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return tuple((a, b) for a, b in merged)


def width(ranges: Ranges) -> int:
    """Number of channels in a channel set."""
    return sum(stop - start for start, stop in ranges)
