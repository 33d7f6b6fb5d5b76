"""`nas retrain`: train a static PicoDet with the full recipe, then evaluate, export and
summarise it (`engine.finalize`).

A retrain run directory ends up holding `config.yaml`, `train.log`, `metrics.csv`, `last.pt`,
`best.pt`, and the outputs `engine.finalize` writes: `model.pt`, `model.onnx`, `metrics.json`.

A search result (`best.yaml`, `engine.search_result`) brings more: its predicted latency and
budget go into `metrics.json`, and when it names its latency table the exported network is
timed on this machine exactly as that table was measured (`engine.measure`). `InitialWeights`
(`engine.pretrained`) start the training from other weights than the builder's
(`nas retrain --init supernet`: the supernet's, given by the command line, which alone may see
the supernet package; `--init model.pt`: a model file's), and `SweepSettings` (`--sweep N`,
`engine.sweep`) choose the learning rate and weight decay with Ray Tune before the final
training.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..arch import Arch, resolve_arch
from ..checkpoint import apply_state, load_checkpoint
from ..data import resolve_data
from ..errors import UserError
from ..models import build_model
from ..utils.rundir import default_run_name, read_run_config, write_run_config
from .bn_calibration import BNCalibration
from .config import TrainConfig
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .evaluate import CocoEvaluator
from .finalize import METRICS_FILE, MODEL_FILE, ONNX_FILE, finalize
from .measure import latency_plan
from .plan import StaticPlan
from .pretrained import InitialWeights
from .search_result import read_search_result
from .session import (close_logging, load_resume_checkpoint, load_train_val, open_run, resumed_config,
                      setup_logging)
from .state import seed_everything
from .trained import model_meta
from .precision import resolve_amp
from .trainer import Trainer

if TYPE_CHECKING:
    from .sweep_settings import SweepSettings


def _arch_for_run(arch_spec: str | Path | Arch, input_size: int | None, ckpt: Mapping[str, Any] | None) -> Arch:
    arch = resolve_arch(arch_spec, input_size)
    if ckpt is None:
        return arch
    saved = Arch.from_dict(ckpt["meta"]["arch"], source="checkpoint")
    if input_size is None:
        arch = arch.replace(input_size=saved.input_size)
    if arch != saved:
        raise UserError(f"architecture {arch_spec} ({arch.key()}) is not the one of the resumed run ({saved.key()})")
    return arch


def retrain(arch_spec: str | Path | Arch, data: str | Path, *, options: Mapping[str, Any] | None = None,
            out: str | None = None, name: str | None = None, resume: Any = None,
            measure_latency: bool | None = None, init: InitialWeights | None = None,
            sweep: "SweepSettings | None" = None, export_int8: int | None = None) -> dict[str, Any] | None:
    """Train `arch_spec` on `data` and write the run's outputs; returns `metrics.json`'s content
    on rank 0 (None on other ranks).

    options: `TrainConfig` fields (None = the published default), including `input_size`.
    resume:  None (new run), True (the run named by out/name, or the latest) or a run path.
    measure_latency: time the exported network with ONNX Runtime for `measured_latency_ms`;
             None: when `arch_spec` is a search result naming its latency table (`latency_plan`).
    init:    starting weights (None: the builder's initialisation); ignored when resuming.
    sweep:   first choose the learning rate and weight decay with a Ray Tune sweep
             (`engine.sweep`), then train with the chosen values; a resumed run continues
             its final training.
    export_int8: also write model.int8.onnx, quantized with ranges from this many training
             images, with its mAP (and measured latency) in metrics.json (`engine.int8_export`).
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    dist_info = init_distributed(options.get("device", "auto"))
    try:
        return _retrain(arch_spec, data, options, out, name, resume, dist_info, measure_latency, init, sweep,
                        export_int8)
    finally:
        close_logging()
        shutdown_distributed()


def _retrain(arch_spec, data, options, out, name, resume, dist_info: DistInfo, measure_latency: bool | None,
             init: InitialWeights | None, sweep: "SweepSettings | None", export_int8: int | None = None):
    input_size = options.get("input_size")
    arch = resolve_arch(arch_spec, input_size)  # a bad ARCH fails before the data is read
    search = read_search_result(arch_spec)
    latency = latency_plan(search, measure_latency)
    fresh_cfg = TrainConfig.for_arch(arch, **options)
    fresh_cfg.check_device(dist_info.device)
    if sweep is not None and dist_info.enabled:
        raise UserError("--sweep runs its trials as Ray Tune workers; start it as one process, not under torchrun")
    train_set, val_set = load_train_val(resolve_data(data), announce=dist_info.is_main)
    if init is not None:
        init = init.for_dataset(arch, train_set, fresh_cfg.seed)
    stem = Path(str(arch_spec)).stem if not isinstance(arch_spec, Arch) else "arch"
    run = open_run("retrain", dist_info, out=out, name=name, resume=resume,
                   default_name=default_run_name(stem), finished_marker=METRICS_FILE)
    ckpt = load_resume_checkpoint(run)
    resume_from = run.resume_from
    arch = _arch_for_run(arch_spec, input_size, ckpt)
    cfg = fresh_cfg if ckpt is None else resumed_config(ckpt, options, resume_from)
    log = setup_logging(run.path, dist_info)
    log.info(("resuming" if ckpt else "run directory") + f" {run.path}")

    meta = model_meta(arch, train_set, recipe=cfg.to_dict())
    sweep_summary = _previous_sweep(run.path) if ckpt is not None else None
    if sweep is not None and ckpt is None:
        from .sweep import run_sweep

        outcome = run_sweep(arch, data, cfg, sweep, run.path, init=init, log=log)
        cfg, sweep_summary = outcome.config, outcome.summary()
        if outcome.kept is not None:  # the chosen trial trained the final schedule: its weights are the model
            resume_from = outcome.kept
            ckpt = load_checkpoint(resume_from)
    if dist_info.is_main:
        write_run_config(run.path, {"command": "retrain", "arch": arch.to_dict(), "data": str(data),
                                    "init": init.kind if init is not None else "scratch",
                                    **({"init_from": init.source} if init is not None else {}),
                                    **({"sweep": sweep_summary} if sweep_summary else {}),
                                    "world_size": dist_info.world_size, "peak_lr": cfg.peak_lr(dist_info.world_size),
                                    "train": cfg.to_dict()})
    seed_everything(cfg.seed)
    model = build_model(arch, train_set.num_classes)
    if init is not None and ckpt is None:
        apply_state(model, init.state, init.source)
        log.info(f"starting from the weights of {init.source} ({init.kind})")
        for note in init.notes:
            log.info(note)
    amp_dtype = resolve_amp(cfg.amp, dist_info.device)
    evaluator = CocoEvaluator(val_set, arch.input_size, dist_info.device, batch_size=cfg.eval_batch_size,
                              workers=cfg.data_workers(dist_info.device), amp_dtype=amp_dtype, dist_info=dist_info)
    calibrate = None
    if cfg.calib_images:
        calibration = BNCalibration(train_set, cfg.calib_images, seed=cfg.seed, device=dist_info.device,
                                    workers=cfg.data_workers(dist_info.device), interp=cfg.train_interp)
        calibrate = functools.partial(calibration, size=arch.input_size)
        log.info(f"BN statistics of the evaluated weights: exact, on {min(cfg.calib_images, len(train_set))} "
                 "augmented training images")
    trainer = Trainer(model, StaticPlan(arch.input_size), cfg, train_set, run.path, dist_info, meta=meta,
                      evaluator=evaluator, best_metric="mAP", calibrate=calibrate, logger=log)
    if ckpt is not None:
        trainer.load_state(ckpt, resume_from)
    result = trainer.fit()
    if not dist_info.is_main:
        return None
    extra = {**(search.latency_figures() if search is not None else {}),
             "init": init.kind if init is not None else "scratch"}
    if sweep_summary:
        extra["sweep"] = sweep_summary
    metrics = finalize(run.path, arch, meta, result.weights, result.metrics, epochs=result.epochs,
                       wall_time_s=result.wall_time_s, best=result.best, extra=extra, latency=latency,
                       int8=None if not export_int8 else {"train_set": train_set, "val_set": val_set,
                                                          "calib_images": int(export_int8)})
    log.info(f"mAP {metrics['coco']['mAP']:.4f} (mAP50 {metrics['coco']['mAP50']:.4f}) after {result.epochs} epochs; "
             f"wrote {run.path / MODEL_FILE}, {run.path / ONNX_FILE}, {run.path / METRICS_FILE}")
    return metrics


def _previous_sweep(run_dir: Path) -> dict[str, Any] | None:
    """The sweep summary a resumed run recorded in its config.yaml when it started."""
    return (read_run_config(run_dir) or {}).get("sweep")
