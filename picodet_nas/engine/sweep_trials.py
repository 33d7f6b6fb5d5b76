"""The trials of a sweep: `train_trial` trains one in a Ray worker and reports its mAP to Tune
after every epoch; `trial_rows` turns Tune's results into the rows of `sweep.csv`
(`write_sweep_csv`), and `choose` picks the trial whose values the final training uses.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..arch import Arch
from ..checkpoint import apply_state
from ..data import CocoDetection, resolve_data
from ..errors import UserError
from ..models import build_model
from ..utils.io import atomic_write_text
from .config import TrainConfig
from .distributed import DistInfo, resolve_device
from .plan import StaticPlan
from .session import close_logging, load_train_val, setup_logging
from .state import seed_everything
from .sweep_settings import SweepSettings, trial_config, trial_epochs
from .precision import resolve_amp
from .trainer import Trainer

SWEEP_COLUMNS = ("trial", "lr", "weight_decay", "epochs", "epochs_run", "mAP", "mAP50", "best_mAP", "stopped_early",
                 "status", "chosen", "error")

_DATASETS: dict[str, tuple[CocoDetection, CocoDetection]] = {}


def _datasets(data: str) -> tuple[CocoDetection, CocoDetection]:
    """The run's data, loaded once per worker process (reuse_actors: trial after trial)."""
    if data not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[data] = load_train_val(resolve_data(data), announce=False)
    return _DATASETS[data]


def train_trial(params: dict[str, Any], *, arch: dict[str, Any], data: str, base_config: dict[str, Any],
                settings: SweepSettings, trials_dir: str, init_state: Mapping[str, torch.Tensor] | None = None,
                init_source: str | None = None) -> None:
    """One Tune trial: train with `params`, report mAP after every epoch (`tune.report`)."""
    from ray import tune

    from .evaluate import CocoEvaluator
    from .trained import model_meta

    torch.set_num_threads(settings.threads_per_trial)
    net_arch = Arch.from_dict(arch)
    base = TrainConfig.from_dict(base_config)
    cfg = trial_config(base, params, trial_epochs(base, settings, params))
    train_set, val_set = _datasets(data)
    run_dir = Path(trials_dir) / tune.get_context().get_trial_name()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(cfg.device))
    dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    log = setup_logging(run_dir, dist_info)
    log.info(f"sweep trial {run_dir.name}: lr {cfg.lr:.4g}, weight decay {cfg.weight_decay:.3g}, {cfg.epochs} epoch(s)")
    seed_everything(cfg.seed)
    model = build_model(net_arch, train_set.num_classes)
    if init_state is not None:
        apply_state(model, init_state, init_source or "initial weights")
    amp_dtype = resolve_amp(cfg.amp, device)
    evaluator = CocoEvaluator(val_set, net_arch.input_size, device, batch_size=cfg.eval_batch_size,
                              workers=cfg.data_workers(device), amp_dtype=amp_dtype)

    def report(epoch: int, weights: dict, metrics: Mapping[str, float]) -> None:
        tune.report({"epoch": epoch, "mAP": float(metrics["mAP"]), "mAP50": float(metrics["mAP50"])})

    trainer = Trainer(model, StaticPlan(net_arch.input_size), cfg, train_set, run_dir, dist_info,
                      meta=model_meta(net_arch, train_set), evaluator=evaluator, best_metric="mAP",
                      on_epoch_end=report, logger=log)
    try:
        trainer.fit()
    finally:
        close_logging()


def trial_name(trial) -> str:
    """`trial_000`, `trial_001`...: the trial's number in the order the search proposed it
    (Tune's experiment tag starts with it, counting from 1), for the trial and its folder.
    A function of the trial alone: Tune copies name creators, so a counter would not do."""
    return f"trial_{int(str(trial.experiment_tag).split('_', 1)[0]) - 1:03d}"


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None:  # RayTaskError wraps the trial's own exception
        cause = cause.cause
    text = str(cause).strip().splitlines()
    return (text[-1] if text else type(cause).__name__)[:200]


def trial_rows(results: Sequence[Any], cfg: TrainConfig, settings: SweepSettings) -> list[dict[str, Any]]:
    """sweep.csv's rows from Tune's results (objects with `path`, `config`, `metrics`, `error`,
    `metrics_dataframe`), in trial order."""
    rows = []
    for r in results:
        metrics = r.metrics or {}
        epochs = trial_epochs(cfg, settings, r.config)
        run = int(metrics.get("epoch", 0) or 0)
        history = r.metrics_dataframe
        best = float(history["mAP"].max()) if history is not None and "mAP" in history and len(history) else None
        failed = r.error is not None
        rows.append({
            "trial": Path(r.path).name,
            "lr": float(r.config["lr"]),
            "weight_decay": float(r.config["weight_decay"]),
            "epochs": epochs,
            "epochs_run": run,
            "mAP": float(metrics["mAP"]) if "mAP" in metrics else None,
            "mAP50": float(metrics["mAP50"]) if "mAP50" in metrics else None,
            "best_mAP": best,
            "stopped_early": (not failed) and run < epochs,
            "status": "error" if failed else ("stopped" if run < epochs else "completed"),
            "chosen": False,
            "error": _first_line(r.error),
        })
    return sorted(rows, key=lambda row: row["trial"])


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best final mAP among the trials that ran their whole schedule (else among all that
    reported), ties to the earlier trial; marks it `chosen`."""
    usable = [r for r in rows if r["status"] != "error" and r["mAP"] is not None and not math.isnan(r["mAP"])]
    if not usable:
        errors = [r["error"] for r in rows if r["error"]]
        raise UserError(f"all {len(rows)} sweep trial(s) failed" + (f"; the first: {errors[0]}" if errors else ""))
    pool = [r for r in usable if r["status"] == "completed"] or usable
    best = max(pool, key=lambda r: r["mAP"])  # max keeps the first of equals: the earlier trial
    best["chosen"] = True
    return best


def write_sweep_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SWEEP_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                         for k in SWEEP_COLUMNS})
    atomic_write_text(path, buf.getvalue())
