"""`nas evolve`: the latency-constrained evolutionary search, end to end.

    inputs checked (settings, budget, table, supernet, data)  ->  run directory, history (Optuna study)
    for each generation g:
        proposal = strategy.propose(g, candidates of generations < g)   # feasible, unseen
        scores looked up in the history, the rest scored by the pool     # recorded as they arrive
        outputs rewritten (best.yaml, pareto.csv/png, generations.csv)
    the space's uniform-width networks scored for reference; the best re-scored; outputs; summary

A killed search resumed with `--resume` continues the same sequence: proposals depend only
on (seed, generation, earlier candidates' scores), scores only on the architecture, and every
score was stored the moment it arrived; what was scored before the kill is looked up, the
rest is scored. Settings that change the sequence (`settings.SEQUENCE_KEYS`: strategy, seed,
population sizes, budget, supernet and table contents, data subsets) must match the
interrupted run; `--generations`, `--workers`, `--address` and the batch size may differ.

The parts: `settings` (the options, their checks, the resolved config), `inputs` (budget,
table, supernet, classes), `pools` (who scores), `rescore`, `report` (the outputs); the run
directory follows the project's rule (`picodet_nas.utils.rundir`, marker `config.yaml`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from picodet_nas.arch import Arch
from picodet_nas.data import resolve_data
from picodet_nas.utils.logs import close_run_log, open_run_log
from picodet_nas.utils.rundir import (RUN_CONFIG, default_run_name, prepare_run_dir, read_run_config,
                                      write_run_config)
from picodet_nas.utils.tensorboard import ScalarLog

from .budget import format_ms
from .data import prepare_subsets
from .history import CANDIDATE, REFERENCE, Scored, SearchHistory, redacted
from .inputs import check_classes, load_inputs
from .operators import Constraint, GenomeSpace
from .pools import RaySession, make_pool
from .proposers import make_proposer
from .lead import check_lead
from .report import SearchOutputs, best_of, choose, generation_scalars
from .rescore import rescore
from .settings import EvolveConfig, check_resume, check_settings, resolved_config, scoring_device

LOG_NAME = "evolution"
LOG_FILE = "evolve.log"


@dataclass
class EvolveResult:
    run_dir: Path
    best: Scored
    candidates: int
    generations: int
    scored_now: int
    wall_s: float
    summary: str


def reference_archs(genomes: GenomeSpace) -> list[Arch]:
    """The space's uniform-width networks (the base arch with every block at one channel ratio),
    each at every input size the table measured, so that some lie near any budget."""
    out: list[Arch] = []
    for arch in genomes.space.uniform_archs():
        for size in sorted(genomes.input_sizes):
            candidate = arch.replace(input_size=size)
            if genomes.allows(candidate) and candidate not in out:
                out.append(candidate)
    return out


def run_evolve(cfg: EvolveConfig, progress: bool = True) -> EvolveResult:
    """Run (or resume) a search; returns the chosen architecture and where the outputs are."""
    started = time.perf_counter()
    check_settings(cfg)
    device, gpus = scoring_device(cfg)  # a device that cannot work fails here, before any input is read
    budget_ms, predictor, state, meta = load_inputs(cfg.supernet, cfg.latency_table, cfg.latency_budget,
                                                    cfg.precision)
    space = predictor.space
    genomes = GenomeSpace(space, predictor.input_sizes)
    constraint = Constraint(predictor, budget_ms)
    run = prepare_run_dir("evolve", out=cfg.out, name=cfg.name, resume=cfg.resume, marker=RUN_CONFIG,
                          default_name=default_run_name(f"{space.name}-{format_ms(budget_ms)}ms-{cfg.strategy}"))
    run_dir = run.path
    previous = read_run_config(run_dir) if run.resume_from is not None else None
    log = open_run_log(LOG_NAME, run_dir / LOG_FILE, console_level=logging.WARNING, console_prefix="nas evolve: ")
    pool = session = None
    set_up = False
    try:
        # -- set-up: everything that can fail on bad input, before the first candidate
        resolved = resolved_config(cfg, budget_ms, space, run_dir, previous)
        if previous is not None:  # before anything in the run directory is rewritten
            check_resume(previous, resolved, run.resume_from)
        split = meta.get("search_split")
        subsets = prepare_subsets(resolve_data(cfg.data), run_dir / "data", calib_images=cfg.calib_images,
                                  val_images=cfg.val_images, seed=cfg.data_seed, batch_size=cfg.batch_size,
                                  held_out_ids=split["held_out_ids"] if split else None, source=cfg.supernet,
                                  rescore_images=cfg.rescore_images if cfg.rescore_top else False)
        if not subsets.recorded_split:
            log.warning("%s records no search split (trained before supernets held images out): scoring on %d "
                        "training images it may have trained on", cfg.supernet, subsets.held_out_total)
        check_classes(meta, cfg.supernet, subsets, cfg.data)
        resolved["calib_images_used"], resolved["val_images_used"] = subsets.calib_images, subsets.val_images
        history = SearchHistory(resolved["storage"], resolved["study_name"], genomes, resume=previous is not None,
                                log=log)
        if cfg.workers != 0:  # joined now, so that a wrong --address fails before the search starts
            session = RaySession(cfg.address or os.environ.get("RAY_ADDRESS") or None,
                                 max(os.cpu_count() or 1, (cfg.workers or 0) * max(1, cfg.threads_per_worker)), log)
        public = {**resolved, "storage": redacted(resolved["storage"])}
        write_run_config(run_dir, public)
        set_up = True
        if previous is not None:
            stale = history.fail_stale_trials()
            log.info("resuming %s: %d architectures already scored%s", run_dir, history.num_scored,
                     f", {stale} stale trial(s) marked FAIL" if stale else "")
        history.set_metadata({"config": {k: v for k, v in public.items() if k != "storage"}, "space": space.ref(),
                              "budget_ms": budget_ms, "strategy": cfg.strategy})
        log.info("search %s: space %s, budget %s ms (fastest %.3f ms), %s, population %d, %d generation(s), "
                 "%d calibration / %d of %d held-out training images (the search split; the validation split "
                 "is not used)", resolved["study_name"], space.name, format_ms(budget_ms),
                 predictor.fastest_ms, cfg.strategy, cfg.population, cfg.generations, subsets.calib_images,
                 subsets.val_images, subsets.held_out_total)

        # -- the generations
        pool = make_pool(workers=cfg.workers, threads_per_worker=cfg.threads_per_worker, device=device,
                         gpus_per_worker=gpus, session=session, space_definition=space.to_dict(),
                         num_classes=meta["num_classes"], state=state, data=subsets.data,
                         input_sizes=predictor.input_sizes, log=log)
        search = _Search(cfg, history, pool, constraint, log, progress)
        proposer = make_proposer(cfg.strategy, genomes, constraint, population=cfg.population, parents=cfg.parents,
                                 mutations=cfg.mutations, crossovers=cfg.crossovers, mutation_prob=cfg.mutation_prob,
                                 seed=cfg.seed, seeds=reference_archs(genomes) if resolved["seed_uniform"] else ())
        provenance = {
            "supernet": resolved["supernet"], "latency_table": resolved["latency_table"], "budget_ms": budget_ms,
            "seed": cfg.seed, "strategy": cfg.strategy, "supernet_sha256": resolved["supernet_sha256"],
            "latency_table_name": predictor.name, "data": resolved["data"], "calib_images": subsets.calib_images,
            "val_images": subsets.val_images, "run_dir": resolved["run_dir"],
        }
        writer = SearchOutputs(run_dir, space, budget_ms, provenance,
                               f"{resolved['study_name']}: {cfg.strategy}, budget {format_ms(budget_ms)} ms")
        generations_done = 0
        # a resumed search replays its recorded generations, so every point is written again
        scalars = ScalarLog(run_dir, purge_step=0) if cfg.tensorboard else None
        for g in range(cfg.generations):
            proposal = proposer.propose(g, history.candidates(before=g))
            if not proposal:
                log.warning("generation %d: no feasible architecture left that was not scored before; stopping", g)
                break
            search.run_generation(g, proposal)
            generations_done = g + 1
            best = writer.write(history)
            if scalars is not None:
                scalars.add("search", generation_scalars(history, g, best), g)
                scalars.flush()
        if scalars is not None:
            scalars.close()
        if cfg.references:
            search.score_references(reference_archs(genomes))
        rescored = rescore(cfg, history, subsets, space.to_dict(), meta["num_classes"], state, run_dir,
                           resolved["supernet_sha256"], log)
        uniform_keys = {a.key() for a in reference_archs(genomes)}
        lead = check_lead(cfg, choose(history.candidates(), rescored), history, subsets, uniform_keys, budget_ms,
                          space.to_dict(), meta["num_classes"], state, run_dir, resolved["supernet_sha256"], log)
        best = writer.write(history, rescored, lead)

        candidates = history.candidates()
        wall = time.perf_counter() - started
        again = ""
        if rescored and best is not None:
            score = rescored["scores"].get(best.key, {}).get("map", lead.reference_map if lead is not None else None)
            again = f" (re-scored on {rescored['images']} search-split images: {score:.4f})" if score is not None else ""
        verdict = ""
        if lead is not None:
            verdict = (f"; lead over the best uniform network in the budget {lead.lead:+.4f} mAP (z {lead.z_text})"
                       if lead.kept else f"; the searched winner's lead ({lead.lead:+.4f} mAP, z {lead.z_text}) "
                       f"is below --min-lead-z {lead.min_z:g}: returning the uniform network")
        summary = (f"best: mAP {best.map:.4f}{again} at {best.predicted_latency_ms:.2f} ms predicted (budget "
                   f"{format_ms(budget_ms)} ms), {best.params / 1e6:.2f}M params, {best.flops / 1e9:.3f} GFLOPs; "
                   f"{len(candidates)} candidates in {generations_done} generation(s), {search.scored_now} scored "
                   f"now in {wall:.0f} s{verdict}; {run_dir / 'best.yaml'}")
        log.info(summary)
        return EvolveResult(run_dir=run_dir, best=best, candidates=len(candidates), generations=generations_done,
                            scored_now=search.scored_now, wall_s=wall, summary=summary)
    finally:
        if pool is not None:
            pool.close()
        if session is not None:
            session.close()
        close_run_log(LOG_NAME)
        if not set_up:
            # A new search that failed before it started (bad data, a database that cannot be
            # opened, no Ray cluster...) leaves nothing behind to block the corrected command.
            run.discard()


class _Search:
    """Scores proposals and references: looks each architecture up first, scores the rest,
    records each score the moment it arrives."""

    def __init__(self, cfg: EvolveConfig, history: SearchHistory, pool, constraint: Constraint,
                 log: logging.Logger, progress: bool):
        self.cfg = cfg
        self.history = history
        self.pool = pool
        self.constraint = constraint
        self.log = log
        self.progress = progress
        self.scored_now = 0

    def run_generation(self, g: int, proposal) -> None:
        from tqdm import tqdm

        recorded = {r.key for r in self.history.candidates(generation=g)}
        keys = [a.key() for a in proposal.archs]
        strays = recorded - set(keys)
        if strays:
            self.log.warning("generation %d: %d recorded candidate(s) are not in this generation's proposal (the "
                             "search code or settings changed since they were scored)", g, len(strays))
        todo: list[tuple[int, Arch, str]] = []
        for order, (arch, origin) in enumerate(zip(proposal.archs, proposal.origins)):
            key = arch.key()
            if key in recorded:
                continue
            if not self.constraint.feasible(arch):  # the proposers never offer one; checked again before scoring
                raise RuntimeError(f"candidate {key} exceeds the latency budget")
            earlier = self.history.lookup(key)
            if earlier is not None:
                self.history.add_reused(arch, earlier, role=CANDIDATE, generation=g, order=order, origin=origin,
                                        budget_ms=self.constraint.budget_ms)
                recorded.add(key)
            else:
                todo.append((order, arch, origin))
        self.log.info("generation %d: %d candidates (%s), %d to score", g, len(proposal),
                      ", ".join(f"{n} {o}" for o, n in proposal.counts().items()), len(todo))
        bar = tqdm(total=len(proposal), initial=len(proposal) - len(todo), desc=f"generation {g + 1}/"
                   f"{self.cfg.generations}", unit="cand", file=sys.stderr, dynamic_ncols=True, leave=True,
                   disable=None if self.progress else True)  # None: quiet when stderr is not a terminal
        with bar:
            self._score(todo, role=CANDIDATE, generation=g, bar=bar)
            best = best_of(self.history.candidates(before=g + 1))
            if best is not None:
                bar.set_postfix_str(f"best mAP {best.map:.4f} @ {best.predicted_latency_ms:.2f} ms")

    def score_references(self, archs: list[Arch]) -> None:
        """The uniform-width networks, for the plot; never candidates, scored once like them."""
        have = {r.key for r in self.history.references()}
        todo = []
        for order, arch in enumerate(archs):
            if arch.key() in have:
                continue
            earlier = self.history.lookup(arch.key())
            if earlier is not None:
                self.history.add_reused(arch, earlier, role=REFERENCE, generation=None, order=order, origin="reference",
                                        budget_ms=self.constraint.budget_ms)
            else:
                todo.append((order, arch, "reference"))
        if todo:
            self.log.info("scoring %d uniform-width reference network(s)", len(todo))
            self._score(todo, role=REFERENCE, generation=None, bar=None)

    def _score(self, todo: list[tuple[int, Arch, str]], *, role: str, generation: int | None, bar) -> None:
        meta = {arch.key(): (order, origin) for order, arch, origin in todo}
        for arch, result in self.pool.score([arch for _, arch, _ in todo]):
            order, origin = meta[arch.key()]
            rec = self.history.add(arch, result, role=role, generation=generation, order=order, origin=origin,
                                   latency_ms=self.constraint.latency(arch), budget_ms=self.constraint.budget_ms)
            self.scored_now += 1
            self.log.info("scored %s %s: mAP %.4f, %.3f ms, %s (%.1f s%s)", role, rec.key, rec.map,
                          rec.predicted_latency_ms, rec.worker, rec.score_seconds,
                          f", attempt {rec.attempts}" if rec.attempts > 1 else "")
            if bar is not None:
                bar.update(1)
