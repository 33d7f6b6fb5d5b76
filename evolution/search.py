"""`nas evolve`: the latency-constrained evolutionary search, end to end.

    inputs checked (budget, table, supernet, data)  ->  run directory, history (Optuna study)
    for each generation g:
        proposal = strategy.propose(g, candidates of generations < g)   # feasible, unseen
        scores looked up in the history, the rest scored by the pool     # recorded as they arrive
        outputs rewritten (best.yaml, pareto.csv/png, generations.csv)
    the space's uniform-width networks scored for reference; outputs; one-line summary

A killed search resumed with `--resume` continues the same sequence: proposals depend only
on (seed, generation, earlier candidates' scores), scores only on the architecture, and every
score was stored the moment it arrived; what was scored before the kill is looked up, the
rest is scored. Settings that change the sequence (strategy, seed, population sizes, budget,
supernet and table contents, data subsets) must match the interrupted run; `--generations`,
`--workers`, `--address` and the batch size may differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from picodet_nas.arch import Arch
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.data import resolve_data
from picodet_nas.errors import CheckpointError, SpaceError, UserError
from picodet_nas.latency.predictor import LatencyPredictor
from picodet_nas.utils.io import atomic_write_text
from picodet_nas.utils.rundir import default_run_name, prepare_run_dir
from picodet_nas.utils.tensorboard import ScalarLog, require_tensorboard

from .budget import format_ms, parse_budget
from .data import prepare_subsets
from .history import CANDIDATE, REFERENCE, Scored, SearchHistory, default_storage, redacted
from .operators import Constraint, GenomeSpace
from .pools import InProcessPool, RayPool, RaySession
from .proposers import STRATEGIES, make_proposer
from .report import best_of, plot_pareto, write_best_yaml, write_generations_csv, write_pareto_csv
from .scoring import CandidateScorer, NetworkScorer

DEFAULT_RUNS_DIR = Path("runs") / "evolve"
CONFIG_FILE = "config.yaml"
LOG_FILE = "evolve.log"
# Resolved settings a resumed search must share with the interrupted one: they decide which
# candidates are proposed or how they score.
SEQUENCE_KEYS = ("strategy", "seed", "population", "parents", "mutations", "crossovers", "mutation_prob", "budget_ms",
                 "supernet_sha256", "latency_table_sha256", "data", "calib_images", "val_images", "data_seed",
                 "study_name")


@dataclass
class EvolveConfig:
    """Every setting of a search; the defaults are the SPOS / DetNAS ones."""

    supernet: str
    latency_table: str
    latency_budget: str
    data: str
    strategy: str = "ga"
    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    generations: int = 20
    seed: int = 0
    workers: int | None = None  # None: one per CPU of the Ray instance; 0: in this process
    threads_per_worker: int = 1
    address: str | None = None
    storage: str | None = None
    resume: bool | str | None = None  # True: the run --out/--name names (else the latest); a path: that run
    out: str | None = None
    name: str | None = None
    calib_images: int | None = 256
    val_images: int | None = 500
    batch_size: int = 16
    data_seed: int = 0
    references: bool = True
    rescore_top: int = 5  # the best K candidates are scored again on more search-split images
    rescore_images: int | None = None  # None: every image of the search split
    tensorboard: bool = False  # also write the best-so-far per generation as TensorBoard scalars
    device: str = "auto"  # where candidates are scored: auto (CUDA when the driver sees a GPU), cpu, cuda[:N]
    gpus_per_worker: float | None = None  # Ray workers: share of a GPU each (None: 1 on CUDA, 0 on the CPU)


@dataclass
class EvolveResult:
    run_dir: Path
    best: Scored
    candidates: int
    generations: int
    scored_now: int
    wall_s: float
    summary: str


def _check_settings(cfg: EvolveConfig) -> None:
    def need(ok: bool, flag: str, what: str, value: Any) -> None:
        if not ok:
            raise UserError(f"--{flag} must be {what}, got {value!r}")

    if cfg.strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    need(cfg.population >= 2, "population", "at least 2", cfg.population)
    need(cfg.parents >= 1, "parents", "at least 1", cfg.parents)
    need(cfg.mutations >= 0, "mutations", ">= 0", cfg.mutations)
    need(cfg.crossovers >= 0, "crossovers", ">= 0", cfg.crossovers)
    if cfg.strategy == "ga" and cfg.mutations + cfg.crossovers > cfg.population:
        raise UserError(f"--mutations + --crossovers ({cfg.mutations} + {cfg.crossovers}) must not exceed "
                        f"--population ({cfg.population}): the population is the size of a generation")
    need(0.0 <= cfg.mutation_prob <= 1.0, "mutation-prob", "a probability in [0, 1]", cfg.mutation_prob)
    need(cfg.generations >= 1, "generations", "at least 1", cfg.generations)
    if cfg.tensorboard:
        require_tensorboard()
    need(cfg.workers is None or cfg.workers >= 0, "workers", ">= 0 (0: score in this process)", cfg.workers)
    need(cfg.threads_per_worker >= 1, "threads-per-worker", "at least 1", cfg.threads_per_worker)
    need(cfg.calib_images is None or cfg.calib_images >= 1, "calib-images", "at least 1", cfg.calib_images)
    need(cfg.val_images is None or cfg.val_images >= 1, "val-images", "at least 1", cfg.val_images)
    need(cfg.batch_size >= 1, "batch-size", "at least 1", cfg.batch_size)
    need(cfg.rescore_top >= 0, "rescore-top", ">= 0 (0: no re-scoring)", cfg.rescore_top)
    need(cfg.rescore_images is None or cfg.rescore_images >= 1, "rescore-images", "at least 1", cfg.rescore_images)
    need(cfg.device == "auto" or cfg.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", str(cfg.device)) is not None,
         "device", "auto, cpu, cuda or cuda:N", cfg.device)
    need(cfg.gpus_per_worker is None or cfg.gpus_per_worker >= 0, "gpus-per-worker", ">= 0", cfg.gpus_per_worker)


def scoring_device(cfg: EvolveConfig) -> tuple[str, float]:
    """(device, GPUs per Ray worker) of a search. `auto` means CUDA when this process sees a GPU;
    a driver without one can still send Ray workers to a GPU cluster with `--device cuda`."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if device.startswith("cuda") else 0.0)
    if device == "cpu" and gpus > 0:
        raise UserError(f"--gpus-per-worker {gpus:g} needs --device cuda (the candidates are scored on the CPU)")
    if device.startswith("cuda"):
        if cfg.workers == 0 and not torch.cuda.is_available():
            raise UserError(f"--device {device}: this process sees no GPU (torch.cuda.is_available() is False); "
                            "use --device cpu, or Ray workers on GPU nodes")
        if cfg.workers != 0 and gpus <= 0:
            raise UserError(f"--device {device} with Ray workers needs --gpus-per-worker > 0 (e.g. 0.5: two "
                            "workers per GPU)")
        if cfg.workers != 0:
            device = "cuda"  # inside a worker, Ray's CUDA_VISIBLE_DEVICES makes its GPU cuda:0
    return device, gpus


def file_digest(path: str | Path) -> str:
    """Short SHA-256 of a file's content: a resumed search must score with the same supernet
    and table, and `nas train-supernet` rewrites `supernet.pt` in place as it trains."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ---- inputs ----------------------------------------------------------------------------------
def load_inputs(cfg: EvolveConfig) -> tuple[float, LatencyPredictor, dict, dict]:
    """(budget ms, predictor, supernet weights, supernet meta), every check a one-line UserError:
    unparseable budget, unreadable table, budget below the fastest subnet, unreadable or
    foreign supernet. Cheapest checks first."""
    budget_ms = parse_budget(cfg.latency_budget)
    predictor = LatencyPredictor.from_file(cfg.latency_table)
    fastest = predictor.fastest_ms
    if budget_ms < fastest:
        raise UserError(f"latency budget {format_ms(budget_ms)} ms is below the fastest subnet of space "
                        f"{predictor.space.name!r}: the fastest achievable latency is {fastest:.3f} ms "
                        f"(predicted by {cfg.latency_table})")
    state, meta = load_model_weights(cfg.supernet)
    if meta.get("kind", "supernet") != "supernet":
        raise CheckpointError(f"{cfg.supernet}: a {meta.get('kind')!r} checkpoint, not a supernet; nas evolve needs "
                              f"the supernet.pt written by nas train-supernet")
    fingerprint = (meta.get("space") or {}).get("fingerprint")
    if fingerprint != predictor.space.fingerprint:
        raise SpaceError(f"{cfg.supernet} was trained on space {(meta.get('space') or {}).get('name')!r} (fingerprint "
                         f"{fingerprint}) but {cfg.latency_table} was measured for space {predictor.space.name!r} "
                         f"({predictor.space.fingerprint}): supernet and latency table must be of the same space")
    if not isinstance(meta.get("num_classes"), int) or meta["num_classes"] < 1:
        raise CheckpointError(f"{cfg.supernet}: the checkpoint's meta lacks num_classes")
    return budget_ms, predictor, state, meta


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


def _check_classes(meta: dict, class_names: list[str], label_to_cat_id: list[int], cfg: EvolveConfig) -> None:
    if meta["num_classes"] != len(label_to_cat_id):
        raise UserError(f"{cfg.supernet} detects {meta['num_classes']} classes but the data in {cfg.data} has "
                        f"{len(label_to_cat_id)}: score the supernet on the data it was trained on")
    want = meta.get("label_to_cat_id")
    if want is not None and list(want) != list(label_to_cat_id):
        raise UserError(f"{cfg.supernet} was trained on category ids {list(want)}, the data in {cfg.data} has "
                        f"{label_to_cat_id}")
    names = meta.get("class_names")
    if names is not None and list(names) != list(class_names):
        raise UserError(f"{cfg.supernet} was trained on classes {list(names)}, the data in {cfg.data} has "
                        f"{class_names}")


# ---- run directory ---------------------------------------------------------------------------
def _setup_logger(run_dir: Path) -> tuple[logging.Logger, list[logging.Handler]]:
    log = logging.getLogger("evolution")
    log.setLevel(logging.INFO)
    log.propagate = False
    file_handler = logging.FileHandler(run_dir / LOG_FILE)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("nas evolve: %(levelname)s: %(message)s"))
    handlers = [file_handler, console]
    for h in handlers:
        log.addHandler(h)
    return log, handlers


def _latest_search(root: Path) -> Path | None:
    runs = [p.parent for p in root.glob(f"*/{CONFIG_FILE}")] if root.is_dir() else []
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime, default=None)


def _prepare_run_dir(cfg: EvolveConfig, stem: str) -> tuple[Path, dict | None]:
    """The run directory and, when resuming, the config it was started with (the project's
    rule, `picodet_nas.utils.rundir`: never reused silently; `--resume` takes the run that
    `--out`/`--name` name, or a path, or else the latest search under runs/evolve)."""
    if cfg.resume in (None, False):
        named = Path(cfg.out) if cfg.out else (DEFAULT_RUNS_DIR / cfg.name if cfg.name else None)
        if named is not None and (named / CONFIG_FILE).is_file():
            raise UserError(f"run directory {named} already holds a search; add --resume to continue it, or choose "
                            f"another --name/--out")
        run = prepare_run_dir("evolve", out=cfg.out, name=cfg.name, default_name=default_run_name(stem))
        return run.path, None
    if cfg.resume is not True:
        run_dir = Path(cfg.resume)
    elif cfg.out:
        run_dir = Path(cfg.out)
    elif cfg.name:
        run_dir = DEFAULT_RUNS_DIR / cfg.name
    else:
        run_dir = _latest_search(DEFAULT_RUNS_DIR)
        if run_dir is None:
            raise UserError(f"--resume: no search under {DEFAULT_RUNS_DIR}; pass --resume RUN_DIR or --out RUN_DIR")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        what = "run directory not found" if not run_dir.exists() else f"no {CONFIG_FILE} in it"
        raise UserError(f"--resume {run_dir}: {what}; nothing to resume")
    try:
        return run_dir, yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        raise UserError(f"{config_path}: not valid YAML; cannot resume") from None


def _check_resume(previous: dict, resolved: dict, run_dir: Path) -> None:
    for key in SEQUENCE_KEYS:
        if previous.get(key) != resolved.get(key):
            raise UserError(f"--resume: {run_dir} was started with {key} = {previous.get(key)!r}, this run has "
                            f"{resolved.get(key)!r}; resume with the same settings or start a new search")


# ---- the search ------------------------------------------------------------------------------
def _resolved_config(cfg: EvolveConfig, budget_ms: float, space, run_dir: Path, previous: dict | None) -> dict:
    """Every setting as the run uses it (absolute paths, file digests, the study), for
    config.yaml and for checking a resume against the interrupted run."""
    study_name = (previous or {}).get("study_name") or run_dir.resolve().name
    storage = cfg.storage or (previous or {}).get("storage") or default_storage(run_dir)
    if "***" in storage:
        raise UserError(f"--resume: the history database of {run_dir} needs a password; pass --storage URL again")
    return {
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"},
        "supernet": str(Path(cfg.supernet).resolve()),
        "latency_table": str(Path(cfg.latency_table).resolve()),
        "data": str(Path(cfg.data).resolve()),
        "budget_ms": budget_ms,
        "space": space.ref(),
        "supernet_sha256": file_digest(cfg.supernet),
        "latency_table_sha256": file_digest(cfg.latency_table),
        "study_name": study_name,
        "storage": storage,
        "run_dir": str(run_dir.resolve()),
    }


def run_evolve(cfg: EvolveConfig, progress: bool = True) -> EvolveResult:
    """Run (or resume) a search; returns the chosen architecture and where the outputs are."""
    started = time.perf_counter()
    _check_settings(cfg)
    scoring_device(cfg)  # a device that cannot work fails here, before any input is read
    budget_ms, predictor, state, meta = load_inputs(cfg)
    space = predictor.space
    genomes = GenomeSpace(space, predictor.input_sizes)
    constraint = Constraint(predictor, budget_ms)
    existed = cfg.out is not None and Path(cfg.out).exists()
    run_dir, previous = _prepare_run_dir(cfg, f"{space.name}-{format_ms(budget_ms)}ms-{cfg.strategy}")
    log, handlers = _setup_logger(run_dir)
    pool = session = None
    set_up = False
    try:
        # -- set-up: everything that can fail on bad input, before the first candidate
        resolved = _resolved_config(cfg, budget_ms, space, run_dir, previous)
        if previous is not None:  # before anything in the run directory is rewritten
            _check_resume(previous, resolved, run_dir)
        split = meta.get("search_split")
        subsets = prepare_subsets(resolve_data(cfg.data), run_dir / "data", calib_images=cfg.calib_images,
                                  val_images=cfg.val_images, seed=cfg.data_seed, batch_size=cfg.batch_size,
                                  held_out_ids=split["held_out_ids"] if split else None, source=cfg.supernet,
                                  rescore_images=cfg.rescore_images if cfg.rescore_top else False)
        if not subsets.recorded_split:
            log.warning("%s records no search split (trained before supernets held images out): scoring on %d "
                        "training images it may have trained on", cfg.supernet, subsets.held_out_total)
        _check_classes(meta, subsets.class_names, subsets.label_to_cat_id, cfg)
        resolved["calib_images_used"], resolved["val_images_used"] = subsets.calib_images, subsets.val_images
        history = SearchHistory(resolved["storage"], resolved["study_name"], genomes, resume=previous is not None,
                                log=log)
        if cfg.workers != 0:  # joined now, so that a wrong --address fails before the search starts
            session = RaySession(cfg.address or os.environ.get("RAY_ADDRESS") or None,
                                 max(os.cpu_count() or 1, (cfg.workers or 0) * max(1, cfg.threads_per_worker)), log)
        public = {**resolved, "storage": redacted(resolved["storage"])}
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(public, sort_keys=False))
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
        pool = _LazyPool(_pool_factory(cfg, session, space.to_dict(), meta["num_classes"], state, subsets,
                                       predictor.input_sizes, log))
        search = _Search(cfg, history, pool, constraint, log, progress)
        proposer = make_proposer(cfg.strategy, genomes, constraint, population=cfg.population, parents=cfg.parents,
                                 mutations=cfg.mutations, crossovers=cfg.crossovers, mutation_prob=cfg.mutation_prob,
                                 seed=cfg.seed)
        provenance = {
            "supernet": resolved["supernet"], "latency_table": resolved["latency_table"], "budget_ms": budget_ms,
            "seed": cfg.seed, "strategy": cfg.strategy, "supernet_sha256": resolved["supernet_sha256"],
            "latency_table_name": predictor.name, "data": resolved["data"], "calib_images": subsets.calib_images,
            "val_images": subsets.val_images, "run_dir": resolved["run_dir"],
        }
        writer = _Outputs(run_dir, space, budget_ms, provenance,
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
        rescored = _rescore(cfg, history, subsets, space.to_dict(), meta["num_classes"], state, run_dir,
                            resolved["supernet_sha256"], log)
        best = writer.write(history, rescored)

        candidates = history.candidates()
        wall = time.perf_counter() - started
        again = (f" (re-scored on {rescored['images']} search-split images: {rescored['scores'][best.key]['map']:.4f})"
                 if rescored else "")
        summary = (f"best: mAP {best.map:.4f}{again} at {best.predicted_latency_ms:.2f} ms predicted (budget "
                   f"{format_ms(budget_ms)} ms), {best.params / 1e6:.2f}M params, {best.flops / 1e9:.3f} GFLOPs; "
                   f"{len(candidates)} candidates in {generations_done} generation(s), {search.scored_now} scored "
                   f"now in {wall:.0f} s; {run_dir / 'best.yaml'}")
        log.info(summary)
        return EvolveResult(run_dir=run_dir, best=best, candidates=len(candidates), generations=generations_done,
                            scored_now=search.scored_now, wall_s=wall, summary=summary)
    finally:
        if pool is not None:
            pool.close()
        if session is not None:
            session.close()
        for h in handlers:
            logging.getLogger("evolution").removeHandler(h)
            h.close()
        if not set_up and previous is None:
            # A new search that failed before it started (bad data, a database that cannot be
            # opened, no Ray cluster...) leaves nothing behind to block the corrected command.
            if existed:
                for child in run_dir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(run_dir, ignore_errors=True)


def _pool_factory(cfg: EvolveConfig, session: RaySession | None, space_definition: dict, num_classes: int,
                  state: dict, subsets, input_sizes, log: logging.Logger):
    device, gpus = scoring_device(cfg)
    if cfg.workers == 0:
        return lambda: InProcessPool(lambda: CandidateScorer(space_definition, num_classes, state, subsets.data,
                                                             cfg.threads_per_worker, device=device))

    def make() -> RayPool:
        # decoded once here, shared through the object store (one copy per node)
        images = NetworkScorer(subsets.data).decoded_images(input_sizes)
        return RayPool(session, workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                       space_definition=space_definition, num_classes=num_classes, state=state, data=subsets.data,
                       log=log, images=images, device=device, gpus_per_worker=gpus)

    return make


def _driver_device(cfg: EvolveConfig) -> str:
    """Where this process scores (the re-scoring): the search's device when this process has it."""
    import torch

    device = scoring_device(cfg)[0]
    return device if device == "cpu" or torch.cuda.is_available() else "cpu"


def _rescore(cfg: EvolveConfig, history: SearchHistory, subsets, space_definition: dict, num_classes: int,
             state: dict, run_dir: Path, supernet_sha: str, log: logging.Logger) -> dict | None:
    """Score the `rescore_top` best candidates again on the larger re-scoring set (in this
    process); {"images", "scores": {key: {map, map50}}}, kept in `rescored.json` so that a
    resumed search does not score them twice. None when there is nothing to re-score."""
    if not cfg.rescore_top or subsets.rescore is None:
        if cfg.rescore_top:
            log.info("no re-scoring: the search already scored on all %d search-split images", subsets.val_images)
        return None
    top: list[Scored] = []
    seen: set[str] = set()
    for c in sorted(history.candidates(), key=Scored.rank_key):
        if c.key not in seen:
            seen.add(c.key)
            top.append(c)
        if len(top) == cfg.rescore_top:
            break
    if not top:
        return None
    path = run_dir / "rescored.json"
    done: dict = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if previous.get("images") == subsets.rescore_images and previous.get("supernet_sha256") == supernet_sha:
                done = dict(previous.get("scores", {}))
        except (OSError, ValueError):
            done = {}
    todo = [c for c in top if c.key not in done]
    if todo:
        scorer = CandidateScorer(space_definition, num_classes, state, subsets.rescore, cfg.threads_per_worker,
                                 device=_driver_device(cfg))
        for c in todo:
            result = scorer.score(c.arch)
            done[c.key] = {"map": result["map"], "map50": result["map50"], "search_map": c.map}
            log.info("re-scored %s on %d search-split images: mAP %.4f (search score %.4f)", c.key,
                     subsets.rescore_images, result["map"], c.map)
            atomic_write_text(path, json.dumps({"images": subsets.rescore_images, "supernet_sha256": supernet_sha,
                                                "scores": done}, indent=2))
    return {"images": subsets.rescore_images, "scores": {c.key: done[c.key] for c in top}}


class _LazyPool:
    """Creates the real pool (the Ray actors, or the in-process scorer) on the first candidate
    to score: resuming a search whose candidates are all scored loads no supernet anywhere."""

    def __init__(self, make):
        self._make = make
        self._pool = None

    def score(self, archs):
        archs = list(archs)
        if not archs:
            return iter(())
        if self._pool is None:
            self._pool = self._make()
        return self._pool.score(archs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


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


def generation_scalars(history: SearchHistory, g: int, best: Scored | None) -> dict[str, float]:
    """The search's curve after generation `g`: the best-so-far and the generation's own scores."""
    own = [c.map for c in history.candidates(generation=g)]
    out = {"candidates": float(len(history.candidates()))}
    if best is not None:
        out.update(best_mAP=best.map, best_predicted_ms=best.predicted_latency_ms)
    if own:
        out.update(generation_mean_mAP=sum(own) / len(own), generation_max_mAP=max(own))
    return out


class _Outputs:
    """Rewrites the outputs from the history; returns the chosen architecture."""

    def __init__(self, run_dir: Path, space, budget_ms: float, provenance: dict, title: str):
        self.run_dir = run_dir
        self.space = space
        self.budget_ms = budget_ms
        self.provenance = provenance
        self.title = title

    def write(self, history: SearchHistory, rescored: dict | None = None) -> Scored | None:
        """`rescored` (from `_rescore`): choose among the re-scored candidates by their new score."""
        candidates, references = history.candidates(), history.references()
        best = best_of(candidates)
        extra_scores: dict[str, Any] = {}
        if rescored:
            again = rescored["scores"]
            pool = [c for c in candidates if c.key in again]
            best = min(pool, key=lambda c: (-again[c.key]["map"], c.predicted_latency_ms, c.key))
            extra_scores = {"rescore_map": again[best.key]["map"], "rescore_map50": again[best.key]["map50"],
                            "rescore_images": rescored["images"], "rescored_candidates": len(again)}
        write_generations_csv(self.run_dir / "generations.csv", candidates)
        write_pareto_csv(self.run_dir / "pareto.csv", candidates, references, best)
        plot_pareto(self.run_dir / "pareto.png", candidates, references, best, self.budget_ms, self.title)
        if best is not None:
            write_best_yaml(self.run_dir / "best.yaml", best, space_ref=self.space.ref(),
                            provenance={**self.provenance, "generation": best.generation,
                                        "candidates": len(candidates)}, extra_scores=extra_scores)
        return best
