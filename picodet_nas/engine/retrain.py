"""`nas retrain` and `nas eval`: train a static PicoDet with the full recipe, then evaluate,
export and summarise it; or score a checkpoint on a dataset's validation split.

A retrain run directory ends up holding `config.yaml`, `train.log`, `metrics.csv`, `last.pt`,
`best.pt`, `model.pt` (the final EMA weights and what is needed to use them: architecture,
classes, category ids), `model.onnx` (with post-processing: image in, detections out) and
`metrics.json` (the design's key names: `coco`, `params`, `flops`, `epochs`, `wall_time_s`).

A search result (`best.yaml`) brings more: its predicted latency and budget go into
`metrics.json`, and when it names its latency table the exported network is timed on this
machine exactly as that table was measured (`measured_latency_ms`, `latency_ratio`,
`budget_met`). `InitialWeights` start the training from other weights than the builder's
(`nas retrain --init supernet`: the supernet's, given by the command line, which alone may
see the supernet package; `--init model.pt`: a model file's, `engine.pretrained`), and
`SweepSettings` (`--sweep N`, `engine.sweep`) choose the learning rate and weight decay with
Ray Tune before the final training.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..arch import Arch, load_arch_file, resolve_arch
from ..checkpoint import apply_state, load_checkpoint, save_checkpoint
from ..data import CocoDetection, resolve_data
from ..errors import DataError, LatencyTableError, UserError
from ..models import build_model
from ..utils.io import atomic_write_json
from ..utils.rundir import default_run_name, prepare_run_dir
from .config import TrainConfig, data_workers
from .bn_calibration import BNCalibration
from .distributed import DistInfo, init_distributed, resolve_device, shutdown_distributed
from .evaluate import EVAL_BATCH_SIZE, CocoEvaluator, evaluate_coco
from .plan import StaticPlan
from .pretrained import Pretrained, initial_state
from .trained import load_trained_model, model_meta, resize_filter
from .session import (close_logging, load_resume_checkpoint, load_split, load_train_val, open_run,
                      resumed_config, setup_logging, write_run_config)
from .state import seed_everything
from .precision import resolve_amp
from .trainer import Trainer

if TYPE_CHECKING:
    from .sweep import SweepSettings

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SearchResult:
    """What a search result (`best.yaml`) carries besides its architecture (`space`, `provenance`,
    `scores`, as `evolution.report.write_best_yaml` writes them); every field may be missing from a hand-written file."""

    path: Path
    space: Mapping[str, Any]  # {name, fingerprint}
    supernet: Path | None
    latency_table: Path | None
    predicted_latency_ms: float | None
    latency_budget_ms: float | None


def _provenance_path(value: Any, base: Path) -> Path | None:
    """A path recorded in best.yaml: as written (nas evolve writes absolute paths), else
    relative to best.yaml's folder when that is where it exists."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    if not path.is_absolute() and not path.exists() and (base / path).exists():
        return base / path
    return path


def read_search_result(arch_spec: str | Path | Arch) -> SearchResult | None:
    """The search-result fields of an architecture file; None for a preset or an `Arch`."""
    if isinstance(arch_spec, Arch) or not Path(arch_spec).is_file():
        return None
    path = Path(arch_spec)
    _, doc = load_arch_file(path)

    def mapping(key: str) -> Mapping[str, Any]:
        return doc.get(key) if isinstance(doc.get(key), dict) else {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    provenance = mapping("provenance")
    return SearchResult(
        path=path, space=mapping("space"),
        supernet=_provenance_path(provenance.get("supernet"), path.parent),
        latency_table=_provenance_path(provenance.get("latency_table"), path.parent),
        predicted_latency_ms=number(mapping("scores").get("predicted_latency_ms")),
        latency_budget_ms=number(provenance.get("latency_budget_ms", provenance.get("budget_ms"))))


def _search_provenance(search: SearchResult | None) -> dict[str, Any]:
    """Latency figures a search result carries into `metrics.json`."""
    out = {}
    if search is not None and search.predicted_latency_ms is not None:
        out["predicted_latency_ms"] = search.predicted_latency_ms
    if search is not None and search.latency_budget_ms is not None:
        out["latency_budget_ms"] = search.latency_budget_ms
    return out


def latency_plan(search: SearchResult | None, measure: bool | None) -> dict[str, Any] | None:
    """How `measured_latency_ms` will be timed, or None when it will not be.

    measure None (the default): timed when the architecture is a search result that names its
    latency table; True: always; False: never. With a table, the timing repeats the table's
    own measurement (threads, repeats, clock, statistic...; the input size is the
    architecture's), so that the measured and the predicted figure compare like with like;
    without one, the profiler's defaults. The table is read now, before training, so that a
    moved or broken table fails in one line at the start rather than after the training.
    """
    table_path = search.latency_table if search is not None else None
    if measure is False or (measure is None and table_path is None):
        return None
    if table_path is None:
        return {"timing": {}, "record": {"latency_table": None}}
    from ..latency import load_table, table_timing
    from ..latency.run_bundle import cpu_model

    try:
        table = load_table(table_path)
    except LatencyTableError as e:
        raise LatencyTableError(f"{e} (the latency table {search.path} names; pass --no-measure-latency to retrain "
                                f"without timing the model)") from None
    meta = table["meta"]
    if meta["backend"] != "onnxruntime" and measure is None:
        return None  # a table of eager PyTorch timings: an ONNX Runtime figure would not compare
    timing = table_timing(table)
    record = {"latency_table": str(table_path), "table_device": meta["device"], "table_cpu_model": meta["cpu_model"],
              "same_cpu_model": meta["cpu_model"] == cpu_model(), "table_num_classes": meta["num_classes"],
              "backend": "onnxruntime",
              **{k: timing[k] for k in ("threads", "repeats", "clock", "statistic")}}
    return {"timing": timing, "record": record}


@dataclass(frozen=True)
class InitialWeights:
    """Weights a retrain starts from instead of the builder's initialisation: for
    `--init supernet`, the state dict of `build_model(arch)` the supernet's `extract` gives; for
    `--init model.pt`, a detector or backbone model file (`pretrained`), whose state dict
    `for_dataset` completes once the training data's classes are known."""

    state: Mapping[str, torch.Tensor]
    source: str  # where they come from, for messages and config.yaml
    label_to_cat_id: Sequence[int] | None = None  # the categories they were trained on, if known
    kind: str = "supernet"
    pretrained: Pretrained | None = None
    notes: tuple[str, ...] = ()  # what was taken from where, for the log

    def check_classes(self, dataset: CocoDetection) -> None:
        if self.label_to_cat_id is not None and list(self.label_to_cat_id) != list(dataset.label_to_cat_id):
            raise DataError(f"{self.source} was trained on category ids {list(self.label_to_cat_id)}, "
                            f"{dataset.ann_file} has {list(dataset.label_to_cat_id)}: the inherited head would "
                            f"predict other classes; start from scratch (--init scratch) on this data")

    def for_dataset(self, arch: Arch, dataset: CocoDetection, seed: int) -> "InitialWeights":
        """The complete weights to train `arch` on `dataset` from (a model file's classifier is
        replaced when the classes differ; the fresh parts are the builder's, seeded by `seed`)."""
        if self.pretrained is None:
            self.check_classes(dataset)
            return self
        seed_everything(seed)
        own = build_model(arch, dataset.num_classes).state_dict()
        state, notes = initial_state(self.pretrained, arch, own, dataset.class_names)
        return replace(self, state=state, notes=tuple(notes), pretrained=None)


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
            sweep: "SweepSettings | None" = None) -> dict[str, Any] | None:
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
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    dist_info = init_distributed(options.get("device", "auto"))
    try:
        return _retrain(arch_spec, data, options, out, name, resume, dist_info, measure_latency, init, sweep)
    finally:
        close_logging()
        shutdown_distributed()


def _retrain(arch_spec, data, options, out, name, resume, dist_info: DistInfo, measure_latency: bool | None,
             init: InitialWeights | None, sweep: "SweepSettings | None"):
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
    extra = {**_search_provenance(search), "init": init.kind if init is not None else "scratch"}
    if sweep_summary:
        extra["sweep"] = sweep_summary
    metrics = finalize(run.path, arch, meta, result.weights, result.metrics, epochs=result.epochs,
                       wall_time_s=result.wall_time_s, best=result.best, extra=extra, latency=latency)
    log.info(f"mAP {metrics['coco']['mAP']:.4f} (mAP50 {metrics['coco']['mAP50']:.4f}) after {result.epochs} epochs; "
             f"wrote {run.path / MODEL_FILE}, {run.path / ONNX_FILE}, {run.path / METRICS_FILE}")
    return metrics


def _previous_sweep(run_dir: Path) -> dict[str, Any] | None:
    """The sweep summary a resumed run recorded in its config.yaml when it started."""
    import yaml

    try:
        doc = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return doc.get("sweep") if isinstance(doc, dict) else None


def finalize(run_dir: Path, arch: Arch, meta: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
             coco: Mapping[str, float], *, epochs: int, wall_time_s: float, best: Mapping[str, Any] | None,
             extra: Mapping[str, Any], latency: Mapping[str, Any] | None) -> dict[str, Any]:
    """model.pt, model.onnx and metrics.json (written last: its presence marks a complete run).

    latency: `latency_plan`'s answer; the network is then timed for `measured_latency_ms`, and
    with the search's figures in `extra`, `latency_ratio` (measured / predicted) and
    `budget_met` (measured <= budget) follow.
    """
    from ..export import export_onnx
    from ..summary import summarize

    save_checkpoint(run_dir / MODEL_FILE, weights, meta, epoch=epochs, metrics=dict(coco))
    model = build_model(arch, meta["num_classes"])
    apply_state(model, weights, run_dir / MODEL_FILE)
    export_onnx(model, run_dir / ONNX_FILE, input_size=arch.input_size, postprocess=True, meta=meta)
    info = summarize(arch, num_classes=meta["num_classes"], model=model)
    metrics: dict[str, Any] = {"coco": dict(coco), "params": info["params"], "flops": info["flops"],
                               "epochs": epochs, "wall_time_s": round(wall_time_s, 3),
                               "input_size": arch.input_size, "arch": arch.to_dict(), "best": best, **extra}
    if latency is not None:
        from ..latency import measure_latency as measure

        stats = measure(arch, num_classes=meta["num_classes"], **latency["timing"])
        metrics["measured_latency_ms"] = round(stats["latency_ms"], 3)
        metrics["latency_measurement"] = {**latency["record"], "input_size": arch.input_size,
                                          "num_classes": meta["num_classes"], "statistic": stats["statistic"],
                                          "p10_ms": round(stats["p10_ms"], 4), "p90_ms": round(stats["p90_ms"], 4),
                                          "samples": stats["samples"]}
    if "predicted_latency_ms" in metrics and "measured_latency_ms" in metrics:
        metrics["latency_ratio"] = round(metrics["measured_latency_ms"] / metrics["predicted_latency_ms"], 4)
    if "latency_budget_ms" in metrics and "measured_latency_ms" in metrics:
        metrics["budget_met"] = metrics["measured_latency_ms"] <= metrics["latency_budget_ms"]
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics


# ---- nas eval ------------------------------------------------------------------------------
def label_mapping(meta: Mapping[str, Any], dataset: CocoDetection, weights: str | Path) -> Sequence[int]:
    """The model's labels as the dataset's category ids: from the checkpoint, checked against the data."""
    mapping = meta.get("label_to_cat_id")
    if mapping is None:
        if meta["num_classes"] != dataset.num_classes:
            raise DataError(f"{weights} predicts {meta['num_classes']} classes, {dataset.ann_file} has "
                            f"{dataset.num_classes} categories")
        return dataset.label_to_cat_id
    unknown = sorted(set(mapping) - set(dataset.label_to_cat_id))
    if unknown:
        raise DataError(f"{weights} was trained on category ids {mapping}; {dataset.ann_file} lacks id {unknown[0]}")
    return mapping


def evaluate_checkpoint(arch_spec: str | Path | Arch | None, weights: str | Path, data: str | Path, *,
                        out: str | None = None, name: str | None = None, input_size: int | None = None,
                        batch_size: int = EVAL_BATCH_SIZE, workers: int | None = None, device: str = "auto"
                        ) -> dict[str, Any]:
    """COCO numbers of a checkpoint on the validation split; writes `metrics.json` in the run dir
    (the same numbers a retrain of these weights reported, with the same batch size). arch_spec
    None: the architecture the checkpoint records, at the input size it was trained at."""
    dev = torch.device(resolve_device(device))
    model, meta, ckpt = load_trained_model(arch_spec, weights, input_size)
    paths = resolve_data(data)
    dataset = load_split(paths.val_ann, paths.val_images)
    mapping = label_mapping(meta, dataset, weights)
    stem = Path(str(weights)).parent.name or "model"
    run = prepare_run_dir("eval", out=out, name=name, default_name=default_run_name(stem))
    t0 = time.perf_counter()
    coco = evaluate_coco(model.to(dev), dataset, model.arch.input_size, device=dev, batch_size=batch_size,
                         workers=data_workers(workers, dev), label_to_cat_id=mapping, progress=True,
                         resize_filter=resize_filter(meta))
    from ..summary import summarize

    info = summarize(model.arch, num_classes=meta["num_classes"], model=model.cpu())
    metrics = {"coco": coco, "params": info["params"], "flops": info["flops"], "epochs": ckpt.get("epoch"),
               "wall_time_s": round(time.perf_counter() - t0, 3), "input_size": model.arch.input_size,
               "arch": model.arch.to_dict(), "weights": str(weights), "data": str(paths.val_ann),
               "images": len(dataset)}
    write_run_config(run.path, {"command": "eval", "arch": model.arch.to_dict(), "weights": str(weights),
                                "data": str(paths.val_ann), "images": str(paths.val_images), "batch_size": batch_size,
                                "device": str(dev)})
    atomic_write_json(run.path / METRICS_FILE, metrics)
    with open(run.path / "eval.log", "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {weights} on {paths.val_ann} ({len(dataset)} images): "
                  + " ".join(f"{k} {v:.4f}" for k, v in coco.items()) + "\n")
    metrics["run_dir"] = str(run.path)
    return metrics
