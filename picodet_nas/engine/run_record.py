"""What a training run records at each epoch end: its progress (epochs, steps, time, the metric
history, the best epoch), the files rank 0 rewrites (`best.pt`, `last.pt`, `metrics.csv`) and
the epoch's log line.

The files are written each atomically, in the order best.pt -> last.pt -> metrics.csv, so a
crash between two writes is repaired by the epoch that a resumed run replays.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..utils.io import atomic_write_text

LOSS_KEYS = ("loss", "loss_vfl", "loss_giou", "loss_dfl", "loss_kd")
TRAIN_COLUMNS = ("epoch", "step", "lr", *LOSS_KEYS, "num_pos", "img_per_s", "epoch_time_s", "wall_time_s")
TIME_COLUMNS = ("img_per_s", "epoch_time_s", "wall_time_s")


@dataclass
class FitResult:
    epochs: int
    weights: dict[str, torch.Tensor]  # the final deploy weights (EMA when enabled)
    history: list[dict[str, Any]]
    metrics: dict[str, float]  # the last evaluation
    best: dict[str, Any] | None
    wall_time_s: float


@dataclass
class TrainProgress:
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimiser steps
    wall_time_s: float = 0.0  # training + evaluation time over all sessions of the run
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch: the metrics.csv columns
    best: dict[str, Any] | None = None  # the best.pt epoch: metric, value, epoch

    def result(self, weights: Mapping[str, torch.Tensor], metric_names: Sequence[str]) -> FitResult:
        """What `Trainer.fit` returns: the run so far, with `weights` as its final weights and
        the metrics of its last evaluated epoch ({} before the first evaluation)."""
        evaluated = [r for r in self.history if any(r.get(k) is not None for k in metric_names)]
        metrics = {k: evaluated[-1][k] for k in metric_names} if evaluated else {}
        return FitResult(epochs=self.epoch, weights=cpu_copy(weights), history=self.history, metrics=metrics,
                         best=self.best, wall_time_s=self.wall_time_s)


def cpu_copy(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


class EpochFiles:
    """The files of a run in `run_dir`, written by rank 0 at each epoch end.

    best_metric: the metric that `best.pt` follows (None: no best.pt).
    on_epoch_end(epoch, weights, metrics): called after best.pt and before last.pt.
    """

    def __init__(self, run_dir: Path, meta: Mapping[str, Any], metric_names: Sequence[str],
                 best_metric: str | None = None,
                 on_epoch_end: Callable[[int, dict, Mapping[str, float]], None] | None = None):
        self.run_dir, self.meta, self.metric_names = run_dir, meta, tuple(metric_names)
        self.best_metric, self.on_epoch_end = best_metric, on_epoch_end

    def write(self, progress: TrainProgress, epoch: int, weights: Mapping[str, torch.Tensor],
              metrics: Mapping[str, float], model: nn.Module,
              state: Callable[[dict[str, torch.Tensor]], dict[str, Any]]) -> None:
        """best.pt (when `metrics` beat the best so far, which `progress` then records), last.pt
        (`model`'s raw weights, `meta` and `state(weights)`) and metrics.csv, for `epoch`."""
        cpu_weights = cpu_copy(weights)
        if self.best_metric and self.best_metric in metrics:
            value = metrics[self.best_metric]
            if progress.best is None or value > progress.best["value"]:
                progress.best = {"metric": self.best_metric, "value": value, "epoch": epoch + 1}
                save_checkpoint(self.run_dir / "best.pt", cpu_weights, self.meta, epoch=epoch + 1,
                                metrics=dict(metrics))
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch + 1, cpu_weights, metrics)
        save_checkpoint(self.run_dir / "last.pt", cpu_copy(model.state_dict()), self.meta, **state(cpu_weights))
        self.write_metrics_csv(progress.history)

    def write_metrics_csv(self, history: Sequence[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*TRAIN_COLUMNS, *self.metric_names], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())


def epoch_summary(row: Mapping[str, Any], metrics: Mapping[str, float], epochs: int) -> str:
    """The log line of an epoch: its losses, LR and pace, and the mAP figures of its evaluation."""
    text = (f"epoch {row['epoch']}/{epochs} loss {row['loss']:.4f} (vfl {row['loss_vfl']:.4f} "
            f"giou {row['loss_giou']:.4f} dfl {row['loss_dfl']:.4f}) lr {row['lr']:.4g} "
            f"{row['img_per_s']:.1f} img/s, {row['epoch_time_s']:.1f} s")
    if metrics:
        text += " | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("mAP", "mAP50")))
    return text
