"""The settings of a search: `EvolveConfig` (every option of `nas evolve`), their validation, the
device candidates are scored on, and the resolved config a run records in `config.yaml` and a
resumed run is checked against."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picodet_nas.errors import UserError
from picodet_nas.utils.rundir import check_resumed_settings
from picodet_nas.utils.tensorboard import require_tensorboard

from .history import default_storage
from .inputs import file_digest
from .proposers import STRATEGIES

# Resolved settings a resumed search must share with the interrupted one: they decide which
# candidates are proposed or how they score. The rest may differ (`--generations`, `--workers`,
# `--address`, the batch size...).
SEQUENCE_KEYS = ("strategy", "seed", "population", "parents", "mutations", "crossovers", "mutation_prob", "budget_ms",
                 "seed_uniform", "supernet_sha256", "latency_table_sha256", "data", "calib_images", "val_images", "data_seed",
                 "study_name")
# How a resume refusal names the sequence keys that are no flag of their own.
_RESUME_LABELS = {"budget_ms": "the latency budget (ms)", "seed_uniform": "seeding generation 0 (--no-seed-uniform: False)", "supernet_sha256": "the --supernet file's SHA-256",
                  "latency_table_sha256": "the --latency-table file's SHA-256", "study_name": "the study"}


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
    precision: str = "fp32"  # the deployment's: the latency table must time models of this precision
    seed_uniform: bool | None = None  # generation 0 starts from the uniform-width networks that meet the
    # budget; None: yes for a new search, as recorded for a resumed one (searches from before the option: no)
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
    min_lead_z: float = 2.0  # a searched winner must lead the best in-budget uniform network by this many
    # standard errors of the paired score difference, else the uniform network is returned (0: off)
    lead_halves: int = 50  # random halves of the images for that standard error (delete-half jackknife)
    tensorboard: bool = False  # also write the best-so-far per generation as TensorBoard scalars
    device: str = "auto"  # where candidates are scored: auto (CUDA when the driver sees a GPU), cpu, cuda[:N]
    gpus_per_worker: float | None = None  # Ray workers: share of a GPU each (None: 1 on CUDA, 0 on the CPU)


def check_settings(cfg: EvolveConfig) -> None:
    """Each setting in its range, or a one-line `UserError` naming its flag."""

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
    need(cfg.min_lead_z >= 0 and cfg.min_lead_z != float("inf"), "min-lead-z", "a finite number >= 0 (0: off)",
         cfg.min_lead_z)
    need(cfg.lead_halves >= 2, "lead-halves", "at least 2", cfg.lead_halves)
    need(cfg.device == "auto" or cfg.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", str(cfg.device)) is not None,
         "device", "auto, cpu, cuda or cuda:N", cfg.device)
    need(cfg.gpus_per_worker is None or cfg.gpus_per_worker >= 0, "gpus-per-worker", ">= 0", cfg.gpus_per_worker)


def scoring_device(cfg: EvolveConfig) -> tuple[str, float]:
    """(device, GPUs per Ray worker) of a search. `auto` means CUDA when this process sees a GPU;
    a driver without one can still send Ray workers to a GPU cluster with `--device cuda`."""
    import torch

    from picodet_nas.engine.distributed import resolve_device

    device = resolve_device("auto") if cfg.device == "auto" else cfg.device  # workers may have the GPU
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


def driver_device(cfg: EvolveConfig) -> str:
    """Where this process scores (the re-scoring): the search's device when this process has it."""
    import torch

    device = scoring_device(cfg)[0]
    return device if device == "cpu" or torch.cuda.is_available() else "cpu"


def resolved_config(cfg: EvolveConfig, budget_ms: float, space, run_dir: Path, previous: dict | None) -> dict:
    """Every setting as the run uses it (absolute paths, file digests, the study), for
    config.yaml and for checking a resume against the interrupted run (`previous`: its config)."""
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
        "seed_uniform": (cfg.seed_uniform if cfg.seed_uniform is not None
                         else bool((previous or {"seed_uniform": True}).get("seed_uniform", False))),
    }


def check_resume(previous: dict, resolved: dict, source: Path) -> None:
    """A resumed search continues the same sequence: every `SEQUENCE_KEYS` setting as recorded
    (a search recorded before `seed_uniform` existed started without seeds)."""
    previous = {"seed_uniform": False, **previous}
    check_resumed_settings(previous, resolved, source, keys=SEQUENCE_KEYS, labels=_RESUME_LABELS)
