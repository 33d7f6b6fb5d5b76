"""`nas train-supernet`: one-shot training of a search space's weight-sharing supernet with the
same engine and recipe as `nas retrain`.

Each step trains the subnets the `SubnetSampler` draws for it (uniform: one random subnet, as
PicoDet's authors describe their supernet training; sandwich: largest + smallest + n random),
every one at its own input size, accumulating their gradients before the optimiser step. The
draw is a pure function of (seed, step), so DDP ranks and a resumed run agree without talking.

A fraction of the training images (`--search-fraction`, default 10%) is held out as the search
split (`picodet_nas.data.split`): the supernet never trains on it, and its held-out image ids
travel in `supernet.pt` so that `nas evolve` scores candidates on exactly those images. Every
evaluation gives the largest and the smallest subnet exact BN statistics on fixed training
images (`BNCalibration`, as every scored network gets them; the supernet's running statistics
mix all subnets and describe none) and scores both on the search split, not the validation
split; `metrics.csv` gets `largest_mAP`, `largest_mAP50`, `smallest_mAP`, `smallest_mAP50`.

Outputs: `supernet.pt` (the EMA weights, the space's name and fingerprint, the classes and the
training config; what `nas evolve` loads), `last.pt`, `metrics.csv`, `config.yaml`, `train.log`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from picodet_nas.checkpoint import check_meta, save_checkpoint
from picodet_nas.data import CocoDetection, resolve_data
from picodet_nas.data.split import DEFAULT_SEARCH_FRACTION, SearchSplit, make_search_split
from picodet_nas.engine.bn_calibration import DEFAULT_CALIB_IMAGES, BNCalibration
from picodet_nas.engine.config import TrainConfig
from picodet_nas.engine.distributed import (DistInfo, broadcast_from_main, init_distributed, on_main,
                                            shutdown_distributed)
from picodet_nas.engine.evaluate import evaluate_coco
from picodet_nas.engine.plan import NetworkPass
from picodet_nas.engine.pretrained import Pretrained, initial_state
from picodet_nas.engine.session import (close_logging, load_resume_checkpoint, load_split, load_train_val,
                                        open_run, resumed_config, setup_logging)
from picodet_nas.engine.state import seed_everything
from picodet_nas.engine.precision import resolve_amp
from picodet_nas.engine.trainer import Trainer
from picodet_nas.errors import UserError
from picodet_nas.space import SearchSpace, load_space
from picodet_nas.utils.rundir import default_run_name, write_run_config

from .inherit import embed_weights, pretrained_subnet
from .sampling import DEFAULT_CORRELATION, STRATEGIES, SubnetSampler
from .supernet import Supernet

SUPERNET_FILE = "supernet.pt"
DEFAULT_STRATEGY = "uniform"
DEFAULT_NUM_RANDOM = 2
HEAD_PER_DEPTH = ("none", "outputs", "all")
SUPERNET_OPTIONS = ("strategy", "num_random", "correlation", "search_fraction", "head_per_depth", "split_seed")
DEFAULT_HEAD_PER_DEPTH = "outputs"
LANDMARKS = ("largest", "smallest")


class SupernetPlan:
    """The subnets of each step, each at its own input size; the loader's multi-scale sizes
    are built around the space's largest input size, so subnets mostly see shrunk batches."""

    find_unused_parameters = True  # head repeats beyond a subnet's depth get no gradient

    def __init__(self, sampler: SubnetSampler):
        self.sampler = sampler
        # sandwich steps run the largest subnet first: it can teach the others (--distill)
        self.teacher_first = sampler.strategy == "sandwich"
        self.base_input_size = max(sampler.space.input_sizes)

    def networks(self, step: int) -> list[NetworkPass]:
        return [NetworkPass(arch, arch.input_size) for arch in self.sampler.archs_for_step(step)]


class LandmarkEvaluator:
    """mAP and mAP50 of the largest and the smallest subnet on the search split, each with exact BN
    statistics of its own weights (`BNCalibration`). Under DDP (`dist_info`) rank 0 recalibrates,
    every rank takes its statistics, and the ranks share the scoring."""

    def __init__(self, space: SearchSpace, calibration: BNCalibration, score_set: CocoDetection, *,
                 device: torch.device, batch_size: int, workers: int, amp_dtype: torch.dtype | None,
                 dist_info: DistInfo | None = None):
        self.subnets = {"largest": space.largest(), "smallest": space.smallest()}
        self.names = tuple(f"{which}_{key}" for which in LANDMARKS for key in ("mAP", "mAP50"))
        self.calibration, self.score_set, self.device = calibration, score_set, device
        self.batch_size, self.workers, self.amp_dtype = batch_size, workers, amp_dtype
        self.dist_info = dist_info

    def __call__(self, model: Supernet) -> dict[str, float]:
        metrics = {}
        for which, arch in self.subnets.items():
            model.set_active(arch)
            if self.dist_info is None or self.dist_info.is_main:
                self.calibration(model, arch.input_size)
            if self.dist_info is not None:
                broadcast_from_main(self.dist_info, model.buffers())
            coco = evaluate_coco(model, self.score_set, arch.input_size, device=self.device,
                                 batch_size=self.batch_size, workers=self.workers, amp_dtype=self.amp_dtype,
                                 progress=True, dist_info=self.dist_info)
            metrics[f"{which}_mAP"], metrics[f"{which}_mAP50"] = coco["mAP"], coco["mAP50"]
        return metrics


def _supernet_options(values: Mapping[str, Any]) -> dict[str, Any]:
    options = {"strategy": values.get("strategy") or DEFAULT_STRATEGY,
               "num_random": values.get("num_random", DEFAULT_NUM_RANDOM),
               "correlation": values.get("correlation", DEFAULT_CORRELATION),
               "search_fraction": values.get("search_fraction", DEFAULT_SEARCH_FRACTION),
               "head_per_depth": values.get("head_per_depth") or DEFAULT_HEAD_PER_DEPTH,
               "split_seed": values.get("split_seed")}
    if options["strategy"] not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {options['strategy']!r}")
    if options["head_per_depth"] not in HEAD_PER_DEPTH:
        raise UserError(f"--head-per-depth must be one of {', '.join(HEAD_PER_DEPTH)}, "
                        f"got {options['head_per_depth']!r}")
    value = options["split_seed"]
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise UserError(f"--split-seed must be an integer >= 0, got {value!r}")
    value = options["num_random"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f"--num-random must be an integer >= 0, got {value!r}")
    if values.get("correlation") is not None and options["strategy"] != "correlated":
        raise UserError(f"--correlation is for --strategy correlated, not {options['strategy']}")
    value = options["correlation"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise UserError(f"--correlation must be a number in [0, 1], got {value!r}")
    value = options["search_fraction"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 0.5:
        raise UserError(f"--search-fraction must be a number in (0, 0.5], got {value!r}")
    return options


def _resumed_options(space: SearchSpace, ckpt: Mapping[str, Any], source: Path) -> dict:
    """The resumed run's supernet options; a checkpoint of another space is a one-line error (the
    given options are checked against them with the training options, by `resumed_config`)."""
    meta = ckpt["meta"]
    check_meta(meta, source, kind="supernet", needs="nas train-supernet --resume continues a supernet's training")
    space.check_fingerprint((meta.get("space") or {}).get("fingerprint"), f"{source}: supernet checkpoint")
    return dict(meta["supernet_options"])


def train_supernet(space_spec: str | Path, data: str | Path, *, options: Mapping[str, Any] | None = None,
                   out: str | None = None, name: str | None = None, resume: Any = None,
                   init: Pretrained | None = None) -> dict[str, Any] | None:
    """Train the supernet of `space_spec` on `data`. `options`: `TrainConfig` fields plus
    `strategy`, `num_random`, `correlation`, `search_fraction`, `head_per_depth` and `split_seed` (None = default;
    the split's seed is then the training seed). `init`: a model file whose
    network (a subnet of the space, or its backbone) the supernet starts from; ignored when
    resuming. Returns a summary on rank 0."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    dist_info = init_distributed(options.get("device", "auto"))
    try:
        return _train_supernet(space_spec, data, options, out, name, resume, dist_info, init)
    finally:
        close_logging()
        shutdown_distributed()


def _train_supernet(space_spec, data, options, out, name, resume, dist_info, init=None):
    if options.get("distill") and (options.get("strategy") or DEFAULT_STRATEGY) != "sandwich":
        raise UserError("--distill needs --strategy sandwich: the largest subnet of each step teaches the others")
    if options.get("bn_freeze_epochs"):
        raise UserError("--bn-freeze-epochs is for nas retrain only: a supernet's BN statistics belong to no one "
                        "subnet (each candidate's are recalibrated when it is scored)")
    if options.get("sync_bn"):
        raise UserError("--sync-bn is for nas retrain only: the supernet's BN layers normalise a different number "
                        "of channels for each subnet, which SyncBatchNorm cannot")
    space = load_space(space_spec)
    subnet = pretrained_subnet(space, init) if init is not None else None  # refused before anything is written
    sn_given = {k: options.pop(k) for k in SUPERNET_OPTIONS if k in options}
    sn_options = _supernet_options(sn_given)
    fresh_cfg = TrainConfig.for_arch(space.base, input_size=max(space.input_sizes), **options)
    paths = resolve_data(data)
    full_train, _ = load_train_val(paths, announce=dist_info.is_main)
    run = open_run("train-supernet", dist_info, out=out, name=name, resume=resume,
                   default_name=default_run_name(space.name))
    ckpt = load_resume_checkpoint(run)
    if ckpt is not None:
        sn_options = {"head_per_depth": "none", "split_seed": None, "correlation": DEFAULT_CORRELATION,
                      **_resumed_options(space, ckpt, run.resume_from)}
        cfg = resumed_config(ckpt, options, run.resume_from, other_settings=(sn_options, sn_given))
    else:
        cfg = fresh_cfg
    log = setup_logging(run.path, dist_info)
    log.info(("resuming" if ckpt else "run directory") + f" {run.path}")
    split = on_main(dist_info, lambda: make_search_split(full_train, sn_options["search_fraction"],
                                                         cfg.seed if sn_options["split_seed"] is None
                                                         else sn_options["split_seed"],
                                                         run.path / "data"))
    if ckpt is not None and "search_split" in ckpt["meta"]:
        recorded = SearchSplit.from_dict(ckpt["meta"]["search_split"])
        if recorded.held_out_ids != split.held_out_ids:
            raise UserError(f"{paths.train_ann}: its images differ from those the resumed run split "
                            f"({run.resume_from}); resume with the same data")
    train_set = load_split(split.train_ann, paths.train_images, False)
    search_set = load_split(split.held_out_ann, paths.train_images, False)
    log.info(f"search split: {len(search_set)} of {len(full_train)} training images held out "
             f"(fraction {split.fraction:g}, seed {split.seed}) for scoring subnets; the supernet trains on "
             f"{len(train_set)}; the validation split is not used")

    seed_everything(cfg.seed)
    model = Supernet(space, train_set.num_classes, per_depth=sn_options["head_per_depth"])
    if init is not None and ckpt is None:
        state, notes = initial_state(init, subnet, model.extract(subnet).state_dict(), train_set.class_names)
        embed_weights(model, subnet, state)
        model.set_active(space.largest())
        log.info(f"starting from the weights of {init.path}, written into the supernet's slices of {subnet.key()}")
        for note in notes:
            log.info(note)
    # The space's definition travels with the weights, so that `nas retrain --init supernet` can
    # rebuild the supernet from the checkpoint alone.
    meta = {**model.checkpoint_meta(), "space_definition": space.to_dict(), "class_names": list(train_set.class_names),
            "label_to_cat_id": list(train_set.label_to_cat_id), "supernet_options": sn_options,
            "search_split": split.to_dict()}
    if dist_info.is_main:
        write_run_config(run.path, {"command": "train-supernet", "space": space.to_dict(),
                                    "space_fingerprint": space.fingerprint, "data": str(data),
                                    "world_size": dist_info.world_size, "peak_lr": cfg.peak_lr(dist_info.world_size),
                                    **({"init_from": str(init.path)} if init is not None and ckpt is None else {}),
                                    **sn_options, "train": cfg.to_dict()})
    sampler = SubnetSampler(space, sn_options["strategy"], seed=cfg.seed, num_random=sn_options["num_random"],
                            correlation=sn_options.get("correlation", DEFAULT_CORRELATION))
    calibration = BNCalibration(train_set, cfg.calib_images or DEFAULT_CALIB_IMAGES, seed=cfg.seed,
                                device=dist_info.device, workers=cfg.data_workers(dist_info.device),
                                interp=cfg.train_interp)
    evaluator = LandmarkEvaluator(space, calibration, search_set, device=dist_info.device,
                                  batch_size=cfg.eval_batch_size,
                                  workers=cfg.data_workers(dist_info.device),
                                  amp_dtype=resolve_amp(cfg.amp, dist_info.device), dist_info=dist_info)

    def write_supernet(epoch: int, weights: dict, metrics: Mapping[str, float]) -> None:
        save_checkpoint(run.path / SUPERNET_FILE, weights, {**meta, "config": cfg.to_dict()}, epoch=epoch,
                        metrics=dict(metrics))

    trainer = Trainer(model, SupernetPlan(sampler), cfg, train_set, run.path, dist_info, meta=meta,
                      evaluator=evaluator, on_epoch_end=write_supernet, logger=log)
    if ckpt is not None:
        trainer.load_state(ckpt, run.resume_from)
    result = trainer.fit()
    if not dist_info.is_main:
        return None
    log.info(f"wrote {run.path / SUPERNET_FILE} after {result.epochs} epochs: "
             + " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    return {"run_dir": str(run.path), "epochs": result.epochs, "metrics": result.metrics,
            "wall_time_s": result.wall_time_s, "space": space.ref()}
