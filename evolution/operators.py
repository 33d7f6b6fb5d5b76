"""Genomes, the latency constraint and the genetic operators of the search.

A genome is the tuple of the chosen value of every gene of the space (`SearchSpace.genes`
order). The search varies the genes over the choices the latency table can price: a table
measured at some of the space's input sizes only limits the `input_size` gene to those, so
that no candidate is ever proposed that the predictor cannot check.

Every operator draws from a `random.Random` handed in by the caller, never from a global
generator: the search seeds one per generation from (seed, generation), which is what makes a
resumed search propose exactly the candidates the uninterrupted one would have.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Sequence

from picodet_nas.arch import Arch
from picodet_nas.latency.predictor import LatencyPredictor
from picodet_nas.space import SearchSpace

Genome = tuple[Any, ...]


def generation_rng(seed: int, generation: int, stream: str = "propose") -> random.Random:
    """The generator of one generation: a pure function of (seed, generation, stream).

    A string seed is hashed with SHA-512 by `random.Random` (independent of PYTHONHASHSEED),
    so the streams of different generations or purposes do not overlap in any simple way."""
    return random.Random(f"picodet-nas/evolve/{stream}/{seed}/{generation}")


class Constraint:
    """Feasibility of an architecture under the latency budget, by the latency predictor."""

    def __init__(self, predictor: LatencyPredictor, budget_ms: float):
        self.predictor = predictor
        self.budget_ms = float(budget_ms)

    def latency(self, arch: Arch) -> float:
        return self.predictor.predict(arch)

    def feasible(self, arch: Arch) -> bool:
        return self.predictor.predict(arch) <= self.budget_ms

    def violation(self, arch: Arch) -> float:
        """Predicted latency minus the budget: <= 0 is feasible (Optuna's constraint convention)."""
        return self.predictor.predict(arch) - self.budget_ms


class GenomeSpace:
    """The searchable genes of a space, with input sizes limited to `input_sizes`."""

    def __init__(self, space: SearchSpace, input_sizes: Iterable[int] | None = None):
        self.space = space
        self.genes = space.genes
        sizes = set(space.input_sizes if input_sizes is None else input_sizes)
        self.choices: tuple[tuple[Any, ...], ...] = tuple(
            tuple(c for c in g.choices if g.dim != "input_size" or c in sizes) for g in self.genes)
        for gene, values in zip(self.genes, self.choices):
            if not values:
                raise ValueError(f"gene {gene.name} has no choice left among input sizes {sorted(sizes)}")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.genes]

    @property
    def input_sizes(self) -> tuple[int, ...]:
        """The input sizes a candidate may take."""
        for gene, values in zip(self.genes, self.choices):
            if gene.dim == "input_size":
                return tuple(values)
        return (self.space.base.input_size,)

    def decode(self, genome: Sequence[Any]) -> Arch:
        return self.space.decode(genome)

    def encode(self, arch: Arch) -> Genome:
        return self.space.encode(arch)

    def allows(self, arch: Arch) -> bool:
        """`arch` is in the space and every gene takes a searchable choice."""
        if not self.space.contains(arch):
            return False
        return all(v in c for v, c in zip(self.space.encode(arch), self.choices))

    def random(self, rng: random.Random) -> Genome:
        return tuple(rng.choice(c) for c in self.choices)

    def mutate(self, genome: Genome, rng: random.Random, prob: float) -> Genome:
        """Each gene, with probability `prob`, redrawn uniformly from its choices (SPOS: the draw
        may return the same value, so the expected number of changed genes is a bit below
        `prob` x genes)."""
        return tuple(rng.choice(c) if rng.random() < prob else v for v, c in zip(genome, self.choices))

    @staticmethod
    def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
        """Uniform crossover: each gene from either parent with probability 1/2."""
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))


class FeasibleSampler:
    """Random architectures that meet the budget and were not seen before.

    Rejection sampling first (`tries` uniform draws). When the budget is tight, uniform draws
    are almost never feasible, so then each further draw is *repaired*: its genes are set, in
    random order, one at a time to those of the fastest subnet of the table until it is
    feasible. The fastest subnet itself meets any accepted budget, so a repair always ends
    feasible, and the repaired architectures sit near the budget, where the best ones are.
    """

    def __init__(self, genomes: GenomeSpace, constraint: Constraint, tries: int = 200):
        self.genomes = genomes
        self.constraint = constraint
        self.tries = tries
        predictor = constraint.predictor
        fastest = min((predictor.extreme(s) for s in genomes.input_sizes), key=lambda t: t[0])[1]
        self.fastest: Genome = genomes.encode(fastest)

    def sample(self, rng: random.Random, exclude: set[str]) -> Arch | None:
        """One feasible architecture whose key is not in `exclude`, or None when none was found
        (a space nearly exhausted under the budget)."""
        for _ in range(self.tries):
            arch = self.genomes.decode(self.genomes.random(rng))
            if arch.key() not in exclude and self.constraint.feasible(arch):
                return arch
        for _ in range(self.tries):
            genome = list(self.genomes.random(rng))
            order = list(range(len(genome)))
            rng.shuffle(order)
            for i in order + [None]:
                arch = self.genomes.decode(genome)
                if self.constraint.feasible(arch):
                    if arch.key() not in exclude:
                        return arch
                    break  # feasible but seen: a fresh draw rather than a walk to the fastest subnet
                if i is not None:
                    genome[i] = self.fastest[i]
        return None
