"""Which architectures a generation scores: the `ga` and `nsga2` strategies.

Both are pure functions of (seed, generation, the candidates scored in earlier generations):
the random generator of generation `g` is seeded from (seed, g) and the earlier candidates
come in proposal order with their scores. A resumed search therefore proposes exactly the
candidates the uninterrupted one did, whatever was scored before the interruption and in
whatever order results arrived; and the scores do not depend on the worker, so neither does
the sequence.

Every proposed architecture meets the latency budget (checked with the predictor before it
is scored) and was not a candidate of an earlier generation or earlier in this one. An
operator whose child fails either check retries, up to `retry_factor` x its quota of
children (SPOS: 10x); what is still missing is filled with fresh random feasible samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from picodet_nas.arch import Arch

from .history import CONSTRAINT, DIRECTIONS, NSGA2_GENERATION_KEY, Scored, load_optuna
from .operators import Constraint, FeasibleSampler, GenomeSpace, generation_rng

STRATEGIES = ("ga", "nsga2")
RETRY_FACTOR = 10


@dataclass
class Proposal:
    """The candidates of one generation, in order, each with the operator that made it."""

    archs: list[Arch] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)

    def add(self, arch: Arch, origin: str) -> None:
        self.archs.append(arch)
        self.origins.append(origin)

    def __len__(self) -> int:
        return len(self.archs)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.origins:
            out[o] = out.get(o, 0) + 1
        return out


class _Builder:
    """Collects a generation's candidates: feasible and unseen, or rejected."""

    def __init__(self, constraint: Constraint, seen: set[str]):
        self.constraint = constraint
        self.taken = set(seen)
        self.proposal = Proposal()

    def offer(self, arch: Arch, origin: str) -> bool:
        key = arch.key()
        if key in self.taken or not self.constraint.feasible(arch):
            return False
        self.taken.add(key)
        self.proposal.add(arch, origin)
        return True


def top_k(records: Sequence[Scored], k: int) -> list[Scored]:
    """The `k` best records: higher mAP, then lower latency, then arch key (a total order)."""
    return sorted(records, key=Scored.rank_key)[:k]


class GAProposer:
    """SPOS / DetNAS evolution: generation 0 is `population` random feasible samples; each
    later generation takes the `parents` best candidates scored so far (all generations: the
    elite survives) and makes `mutations` mutants (a random parent, each gene redrawn with
    probability `mutation_prob`) and `crossovers` uniform crossovers of two distinct random
    parents, then fills up to `population` with random feasible samples. `seeds` (e.g. the space's
    uniform-width networks) come first in generation 0, those that meet the budget."""

    def __init__(self, genomes: GenomeSpace, constraint: Constraint, *, population: int, parents: int,
                 mutations: int, crossovers: int, mutation_prob: float, seed: int,
                 retry_factor: int = RETRY_FACTOR, seeds: Sequence[Arch] = ()):
        self.genomes = genomes
        self.constraint = constraint
        self.sampler = FeasibleSampler(genomes, constraint)
        self.population = population
        self.parents = parents
        self.mutations = mutations
        self.crossovers = crossovers
        self.mutation_prob = mutation_prob
        self.seed = seed
        self.retry_factor = retry_factor
        self.seeds = tuple(seeds)

    def propose(self, generation: int, earlier: Sequence[Scored]) -> Proposal:
        rng = generation_rng(self.seed, generation)
        build = _Builder(self.constraint, {r.key for r in earlier})
        if generation == 0:
            _offer_seeds(build, self.seeds, self.population)
        elite = [self.genomes.encode(r.arch) for r in top_k(earlier, self.parents)] if generation > 0 else []
        if elite:
            made = tries = 0
            while made < self.mutations and tries < self.retry_factor * self.mutations:
                tries += 1
                child = self.genomes.mutate(rng.choice(elite), rng, self.mutation_prob)
                made += build.offer(self.genomes.decode(child), "mutation")
        if len(elite) >= 2:
            made = tries = 0
            while made < self.crossovers and tries < self.retry_factor * self.crossovers:
                tries += 1
                a, b = rng.sample(elite, 2)
                made += build.offer(self.genomes.decode(self.genomes.crossover(a, b, rng)), "crossover")
        _fill_random(build, self.sampler, rng, self.population)
        return build.proposal


def _offer_seeds(build: _Builder, seeds: Sequence[Arch], population: int) -> None:
    for arch in seeds:
        if len(build.proposal) >= population:
            return
        build.offer(arch, "seed")


def _fill_random(build: _Builder, sampler: FeasibleSampler, rng, population: int) -> None:
    while len(build.proposal) < population:
        arch = sampler.sample(rng, build.taken)
        if arch is None:
            return  # the space under the budget is (nearly) exhausted: a smaller generation
        build.offer(arch, "random")


class NSGA2Proposer:
    """Optuna's `NSGAIISampler` (accuracy up, latency down, the budget as a constraint) as the
    proposal step of the same search.

    For generation `g` an in-memory replica study is built from the candidates of generations
    `< g` (values, constraints and Optuna's own generation attribute, exactly as stored in
    the history), with a sampler seeded from (seed, g) and pinned to generation `g`; children
    are `ask`ed from it until `population` feasible, unseen ones are found (infeasible or
    repeated children are discarded, up to `retry_factor` x population asks), and the rest are
    random feasible samples. Rebuilding the replica instead of keeping one sampler alive is
    what makes a resumed search propose the same children: NSGA-II's state is a function of
    the stored trials and the seed, nothing else. Parent selection (non-dominated sorting with
    constrained domination and crowding distance) and the uniform crossover and mutation are
    Optuna's.
    """

    def __init__(self, genomes: GenomeSpace, constraint: Constraint, *, population: int, mutation_prob: float | None,
                 seed: int, retry_factor: int = RETRY_FACTOR, seeds: Sequence[Arch] = ()):
        self.genomes = genomes
        self.constraint = constraint
        self.sampler = FeasibleSampler(genomes, constraint)
        self.population = population
        self.mutation_prob = mutation_prob
        self.seed = seed
        self.retry_factor = retry_factor
        self.seeds = tuple(seeds)

    def _replica(self, generation: int, earlier: Sequence[Scored]):
        optuna = load_optuna()

        sampler_seed = generation_rng(self.seed, generation, "nsga2").getrandbits(32)
        sampler = _pinned_sampler_class()(generation, population_size=max(self.population, 2),
                                          mutation_prob=self.mutation_prob, seed=sampler_seed)
        study = optuna.create_study(directions=list(DIRECTIONS), sampler=sampler)
        dists = {n: optuna.distributions.CategoricalDistribution(list(c))
                 for n, c in zip(self.genomes.names, self.genomes.choices)}
        study.add_trials([
            optuna.trial.create_trial(
                params=dict(zip(self.genomes.names, self.genomes.encode(r.arch))), distributions=dists,
                values=[r.map, r.predicted_latency_ms], system_attrs={NSGA2_GENERATION_KEY: r.generation},
                constraints={CONSTRAINT: r.predicted_latency_ms - self.constraint.budget_ms})
            for r in earlier])
        return study, dists

    def propose(self, generation: int, earlier: Sequence[Scored]) -> Proposal:
        optuna = load_optuna()
        study, dists = self._replica(generation, earlier)
        build = _Builder(self.constraint, {r.key for r in earlier})
        if generation == 0:
            _offer_seeds(build, self.seeds, self.population)
        asks = 0
        while len(build.proposal) < self.population and asks < self.retry_factor * self.population:
            asks += 1
            trial = study.ask(dists)
            arch = self.genomes.decode([trial.params[n] for n in self.genomes.names])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the replica only proposes
            build.offer(arch, "nsga2")
        _fill_random(build, self.sampler, generation_rng(self.seed, generation), self.population)
        return build.proposal


_PINNED = None


def _pinned_sampler_class():
    """`NSGAIISampler` whose new trials all belong to one given generation.

    Optuna infers a new trial's generation from how many trials of the latest generation have
    completed; a generation the search left smaller than the population (a nearly exhausted
    space) would then be mistaken for one still in progress. The subclass keeps Optuna's
    storage keys, so the replica reads the generation attribute the history stores."""
    global _PINNED
    if _PINNED is None:
        from optuna.samplers import NSGAIISampler

        class PinnedGenerationNSGAII(NSGAIISampler):
            def __init__(self, generation: int, **kwargs):
                super().__init__(**kwargs)
                self._pinned_generation = generation

            def get_trial_generation(self, study, trial) -> int:
                return self._pinned_generation

        PinnedGenerationNSGAII._GENERATION_KEY = NSGAIISampler._GENERATION_KEY
        PinnedGenerationNSGAII._PARENT_CACHE_KEY_PREFIX = NSGAIISampler._PARENT_CACHE_KEY_PREFIX
        _PINNED = PinnedGenerationNSGAII
    return _PINNED


def make_proposer(strategy: str, genomes: GenomeSpace, constraint: Constraint, *, population: int, parents: int,
                  mutations: int, crossovers: int, mutation_prob: float, seed: int, seeds: Sequence[Arch] = ()):
    """The proposer of `strategy`; `seeds`: architectures generation 0 offers before its random
    samples (those that meet the budget, at most `population`)."""
    if strategy == "ga":
        return GAProposer(genomes, constraint, population=population, parents=parents, mutations=mutations,
                          crossovers=crossovers, mutation_prob=mutation_prob, seed=seed, seeds=seeds)
    if strategy == "nsga2":
        return NSGA2Proposer(genomes, constraint, population=population, mutation_prob=mutation_prob, seed=seed,
                             seeds=seeds)
    raise ValueError(f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
