"""Which subnet(s) a supernet training step trains.

* `uniform`: one subnet drawn uniformly from the space (every gene independently).
* `sandwich` (BigNAS): the largest and the smallest subnet plus `num_random` uniform ones;
  the step accumulates the gradients of all of them before the optimiser step.
* `alternating`: the sandwich's subnets spread over steps, one subnet per step (so a step
  costs what a uniform step costs): a cycle of `2 + num_random` steps trains the largest,
  then the smallest, then `num_random` uniform draws.

The draw depends only on `(seed, step)`: the random generator of step `s` is seeded with
`seed * 1_000_003 + s`, so every DDP rank (and a resumed run) trains the same subnets at
the same step without any communication.
"""

from __future__ import annotations

import random

from picodet_nas.arch import Arch
from picodet_nas.space import SearchSpace

STRATEGIES = ("uniform", "sandwich", "alternating")


class SubnetSampler:
    def __init__(self, space: SearchSpace, strategy: str = "sandwich", seed: int = 0, num_random: int = 2):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
        if num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {num_random}")
        self.space = space
        self.strategy = strategy
        self.seed = seed
        self.num_random = num_random
        self._largest = space.largest()
        self._smallest = space.smallest()

    def rng_for_step(self, step: int) -> random.Random:
        """The generator of step `step`: a pure function of (seed, step)."""
        return random.Random(self.seed * 1_000_003 + step)

    def archs_for_step(self, step: int) -> list[Arch]:
        """The subnets of step `step`: `[random]` (uniform) or
        `[largest, smallest, random x num_random]` (sandwich), or one of them by
        `step % (2 + num_random)` (alternating)."""
        rng = self.rng_for_step(step)
        if self.strategy == "uniform":
            return [self.space.sample(rng)]
        if self.strategy == "alternating":
            phase = step % (2 + self.num_random)
            if phase == 0:
                return [self._largest]
            if phase == 1:
                return [self._smallest]
            return [self.space.sample(rng)]
        return [self._largest, self._smallest] + [self.space.sample(rng) for _ in range(self.num_random)]
