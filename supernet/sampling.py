"""Which subnet(s) a supernet training step trains.

* `uniform`: one subnet drawn uniformly from the space (every gene independently).
* `sandwich` (BigNAS): the largest and the smallest subnet plus `num_random` uniform ones;
  the step accumulates the gradients of all of them before the optimiser step.
* `alternating`: the sandwich's subnets spread over steps, one subnet per step (so a step
  costs what a uniform step costs): a cycle of `2 + num_random` steps trains the largest,
  then the smallest, then `num_random` uniform draws.
* `correlated`: one subnet per step whose genes move together. The step draws a level
  `q ~ U[0, 1)`; each gene, with probability `correlation`, takes its choice at that level
  (index `floor(q * k)` of its `k` sorted choices), else a uniform draw of its own. Every gene's
  marginal stays uniform, so each weight slice is trained as often as under `uniform`, but a
  step's subnet is mostly small, mostly middle or mostly large: the largest and smallest
  regions of the space are trained as coherent networks rather than only as mixtures.
  `correlation` 0 is `uniform`; 1 trains only the networks of one level per step.

The draw depends only on `(seed, step)`: the random generator of step `s` is seeded with
`seed * 1_000_003 + s`, so every DDP rank (and a resumed run) trains the same subnets at
the same step without any communication.
"""

from __future__ import annotations

import random

from picodet_nas.arch import Arch
from picodet_nas.space import SearchSpace

STRATEGIES = ("uniform", "sandwich", "alternating", "correlated")
DEFAULT_CORRELATION = 0.5


class SubnetSampler:
    def __init__(self, space: SearchSpace, strategy: str = "sandwich", seed: int = 0, num_random: int = 2,
                 correlation: float = DEFAULT_CORRELATION):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
        if num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {num_random}")
        if not 0.0 <= correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {correlation}")
        self.space = space
        self.strategy = strategy
        self.seed = seed
        self.num_random = num_random
        self.correlation = float(correlation)
        self._largest = space.largest()
        self._smallest = space.smallest()

    def rng_for_step(self, step: int) -> random.Random:
        """The generator of step `step`: a pure function of (seed, step)."""
        return random.Random(self.seed * 1_000_003 + step)

    def archs_for_step(self, step: int) -> list[Arch]:
        """The subnets of step `step`: `[random]` (uniform) or
        `[largest, smallest, random x num_random]` (sandwich), or one of them by
        `step % (2 + num_random)` (alternating), or `[one correlated draw]` (correlated)."""
        rng = self.rng_for_step(step)
        if self.strategy == "uniform":
            return [self.space.sample(rng)]
        if self.strategy == "correlated":
            return [self._correlated(rng)]
        if self.strategy == "alternating":
            phase = step % (2 + self.num_random)
            if phase == 0:
                return [self._largest]
            if phase == 1:
                return [self._smallest]
            return [self.space.sample(rng)]
        return [self._largest, self._smallest] + [self.space.sample(rng) for _ in range(self.num_random)]

    def _correlated(self, rng: random.Random) -> Arch:
        """One draw of the `correlated` rule (see the module's doc)."""
        level = rng.random()
        genome = []
        for gene in self.space.genes:
            choices = gene.choices  # sorted, smallest first
            shared = rng.random() < self.correlation
            pick = choices[min(int(level * len(choices)), len(choices) - 1)] if shared else rng.choice(choices)
            genome.append(pick)
        return self.space.decode(genome)
