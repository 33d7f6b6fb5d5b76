"""The one training loop of picodet-nas: static PicoDets (`nas retrain`) and the supernet
(`nas train-supernet`) both run through `Trainer.fit`.

Per step: the LR from the schedule, then every `NetworkPass` the `StepPlan` names for the step
(forward at its own input size, PicoDet loss, backward; gradients accumulate), one SGD step,
one cycle-EMA update. Per epoch end: the EMA weights are evaluated (when due) by the caller's
`Evaluator`, `best.pt` is kept on the caller's metric, `last.pt` holds everything needed to
continue exactly (model, EMA, optimiser, grad scaler, RNG states, epoch, step, metric history),
and `metrics.csv` is rewritten from that history.

Exact resume: the data loader is a pure function of (seed, epoch, rank), the LR a pure function
of the step, the subnets a pure function of the step; everything else is in `last.pt`. A run
killed anywhere restarts the interrupted epoch from its beginning and ends with bit-identical
weights (on a GPU, with `deterministic`). Files are written by rank 0 only, each atomically,
in the order best.pt -> last.pt -> metrics.csv, so a crash between two writes is repaired by
the replayed epoch.

Under DDP: the gradients are all-reduced once per step, in the backward of its last pass (the
other passes run under `no_sync` and accumulate locally); before that backward the ranks
compare their losses, so a non-finite loss on any rank stops every rank at once with the same
`TrainingDiverged`; at each epoch end every rank takes rank 0's epoch weights (BN statistics
drift apart between ranks), rank 0 alone recalibrates them, and all ranks share the evaluation.
`sync_bn` turns the BN layers into SyncBatchNorm (GPUs only).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import apply_state, save_checkpoint
from ..data import CocoDetection, build_train_loader, normalize
from ..errors import CheckpointError, UserError
from ..losses import PicoDetLoss, inplace_distillation_loss
from ..utils.tensorboard import ScalarLog, require_tensorboard
from ..models import flatten_outputs
from ..utils.io import atomic_write_text
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_mean, barrier, broadcast_from_main, gather_floats
from .ema import CycleEMA
from .evaluate import autocast
from .optim import build_optimizer, set_lr
from .plan import StepPlan, pass_size, resize_batch
from .schedule import LRSchedule
from .state import capture_rng, restore_rng, set_deterministic

LOSS_KEYS = ("loss", "loss_vfl", "loss_giou", "loss_dfl", "loss_kd")
TRAIN_COLUMNS = ("epoch", "step", "lr", *LOSS_KEYS, "num_pos", "img_per_s", "epoch_time_s", "wall_time_s")
TIME_COLUMNS = ("img_per_s", "epoch_time_s", "wall_time_s")
ESTIMATE_STEPS = (2, 10)  # steps timed for the duration estimate: from the end of the 2nd to the end of the 10th
CPU_WARN_S = 3 * 3600  # a CPU run expected to train longer than this gets a one-line warning


class Evaluator(Protocol):
    """Scores a model holding the epoch's (EMA) weights; may change it freely (it is a copy).

    Called on every rank, all holding the same weights; under DDP it shares the work between
    them (e.g. `evaluate_coco` with `dist_info`) and returns the same numbers on every rank.
    """

    names: Sequence[str]  # the metric columns it returns, fixed for the run

    def __call__(self, model: nn.Module) -> Mapping[str, float]: ...


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the recipe (usually the LR) does not suit this run."""


@dataclass
class FitResult:
    epochs: int
    weights: dict[str, torch.Tensor]  # the final deploy weights (EMA when enabled)
    history: list[dict[str, Any]]
    metrics: dict[str, float]  # the last evaluation
    best: dict[str, Any] | None
    wall_time_s: float


@dataclass
class _Progress:
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimiser steps
    wall_time_s: float = 0.0  # training + evaluation time over all sessions of the run
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto': bf16 on a GPU that has it, else fp16; no mixed precision on a CPU."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm layer replaced by a SyncBatchNorm (same parameters and
    buffers, so state dicts keep their keys). A BN subclass with behaviour of its own (the
    supernet's channel-slicing `DynamicBatchNorm2d`) would lose it in the conversion: refused."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    special = sorted({type(m).__name__ for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in plain})
    if special:
        raise UserError(f"--sync-bn: this model's BN layers ({', '.join(special)}) cannot become SyncBatchNorm; "
                        "leave --sync-bn out")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer:
    """Trains `model` on `train_set` as `plan` and `cfg` say, writing into `run_dir`.

    model:       a `PicoDet` or a `Supernet` (anything whose forward gives per-level outputs
                 and that has `num_classes`), on the CPU; the trainer moves it to the device.
    evaluator:   scores the epoch's weights, on every rank (None: no evaluation).
    best_metric: the evaluator's metric that `best.pt` follows (None: no best.pt).
    meta:        plain data saved in every checkpoint (architecture, classes, space...).
    on_epoch_end(epoch, weights, metrics): rank 0 only, after evaluation, before last.pt;
                 e.g. to write `supernet.pt`.
    calibrate:   called on rank 0 with a model holding the epoch's weights, before each
                 evaluation and after the last epoch, to recompute its BN statistics; the
                 recomputed statistics replace the averaged ones in the epoch's weights (so
                 best.pt, last.pt's EMA and the final weights hold them). None: keep them.
    """

    def __init__(self, model: nn.Module, plan: StepPlan, cfg: TrainConfig, train_set: CocoDetection,
                 run_dir: str | Path, dist_info: DistInfo, *, meta: Mapping[str, Any],
                 evaluator: Evaluator | None = None, best_metric: str | None = None,
                 on_epoch_end: Callable[[int, dict, Mapping[str, float]], None] | None = None,
                 calibrate: Callable[[nn.Module], None] | None = None,
                 logger: logging.Logger | None = None):
        self.cfg = cfg
        self.plan = plan
        self.train_set = train_set
        self.run_dir = Path(run_dir)
        self.dist = dist_info
        self.meta = dict(meta)
        self.evaluator = evaluator
        self.best_metric = best_metric
        self.on_epoch_end = on_epoch_end
        self.calibrate = calibrate
        self._session_steps, self._estimate_t0 = 0, 0.0  # the duration estimate (_estimate_duration)
        self.log = logger or logging.getLogger("picodet_nas.run")
        self.device = dist_info.device
        cfg.check_device(self.device)
        if cfg.deterministic:
            set_deterministic()
        self.amp_dtype = resolve_amp(cfg.amp, self.device)

        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.num_classes = model.num_classes
        # The evaluation copy is made before DDP wraps the model (DDP hooks must not be copied)
        # and before SyncBatchNorm replaces its BN layers (evaluation needs no synchronisation).
        wants_copy = evaluator is not None or calibrate is not None
        self._eval_model = copy.deepcopy(self.model) if wants_copy else None
        if dist_info.enabled:
            if cfg.sync_bn:
                self.model = convert_sync_bn(self.model)
            ids = [dist_info.local_rank] if self.device.type == "cuda" else None
            self.net: nn.Module = DistributedDataParallel(self.model, device_ids=ids,
                                                          find_unused_parameters=plan.find_unused_parameters)
        else:
            if cfg.sync_bn:
                self.log.info("--sync-bn: one process, no BN statistics to synchronise")
            self.net = self.model
        self.peak_lr = cfg.peak_lr(dist_info.world_size)
        self.loader = build_train_loader(
            train_set, cfg.batch_size, cfg.train_sizes, workers=cfg.data_workers(self.device), seed=cfg.seed,
            rank=dist_info.rank, world_size=dist_info.world_size, interp=cfg.train_interp, uint8=True,
            persistent_workers=True, pin_memory=self.device.type == "cuda")
        self.iters_per_epoch = len(self.loader)
        self.schedule = LRSchedule(self.peak_lr, self.iters_per_epoch, cfg.cosine_epochs, cfg.warmup_iters,
                                   cfg.warmup_start)
        self.optimizer = build_optimizer(self.model, self.schedule(0), cfg.momentum, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = CycleEMA(self.model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_cycle_epochs,
                            average_buffers=cfg.ema_buffers) if cfg.ema else None
        self.loss_fn = PicoDetLoss(self.num_classes)
        self.progress = _Progress()
        self._final_weights: dict[str, torch.Tensor] = {}
        self.metric_names = tuple(evaluator.names) if evaluator is not None else ()
        if cfg.tensorboard:
            require_tensorboard()  # before any work, not after the first epoch
        self._scalars: ScalarLog | None = None

    # ---- checkpoints ----------------------------------------------------------------
    def state(self, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Everything `last.pt` holds besides `meta` and the raw `model` weights."""
        p = self.progress
        return {
            "ema": {k: v.detach().cpu() for k, v in weights.items()},
            "ema_state": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "epoch": p.epoch,
            "step": p.step,
            "wall_time_s": p.wall_time_s,
            "history": p.history,
            "best": p.best,
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
        }

    def load_state(self, ckpt: Mapping[str, Any], source: str | Path) -> None:
        """Continue from a `last.pt` written by this trainer (same config, same world size)."""
        if ckpt.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(f"{source}: trained with {ckpt.get('world_size')} process(es), this run has "
                                  f"{self.dist.world_size}; resume with the same number (the global batch is part "
                                  f"of the recipe)")
        apply_state(self.model, ckpt["model"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema_state"])
        restore_rng(ckpt["rng"])
        self.progress = _Progress(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]),
                                  wall_time_s=float(ckpt["wall_time_s"]), history=list(ckpt["history"]),
                                  best=ckpt["best"])
        self._final_weights = ckpt["ema"]

    def _write_metrics_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*TRAIN_COLUMNS, *self.metric_names], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in self.progress.history:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

    # ---- the loop -------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg, p = self.cfg, self.progress
        if p.epoch >= cfg.epochs:
            self.log.info(f"all {cfg.epochs} epochs were already trained")
            return self._result(self._final_weights)
        self.log.info(f"training {cfg.epochs - p.epoch} epoch(s) from epoch {p.epoch + 1}: "
                      f"{self.iters_per_epoch} steps/epoch, {cfg.batch_size} images/step/process x "
                      f"{self.dist.world_size} process(es), peak lr {self.peak_lr:.4g}, device {self.device}"
                      + (f", amp {self.amp_dtype}" if self.amp_dtype else ""))
        self.model.train()
        session_start, session_wall = time.perf_counter(), p.wall_time_s
        if cfg.tensorboard and self.dist.is_main:  # a resumed run drops the events written after last.pt
            self._scalars = ScalarLog(self.run_dir, purge_step=p.step + 1)
        try:
            self._fit_epochs(session_start, session_wall)
        finally:
            if self._scalars is not None:
                self._scalars.close()
                self._scalars = None
        return self._result(self._final_weights)

    def _fit_epochs(self, session_start: float, session_wall: float) -> None:
        cfg, p = self.cfg, self.progress
        for epoch in range(p.epoch, cfg.epochs):
            self._set_bn_mode(epoch)
            losses = self._train_epoch(epoch)
            weights = self.ema.end_epoch(self.model) if self.ema else {
                k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._calibrate(epoch, weights)
            broadcast_from_main(self.dist, weights.values())  # every rank: rank 0's (recalibrated) weights
            metrics = self._evaluate(epoch, weights)
            p.epoch, p.wall_time_s = epoch + 1, session_wall + time.perf_counter() - session_start
            row = {"epoch": epoch + 1, "step": p.step, "lr": self.schedule(max(p.step - 1, 0)), **losses,
                   "wall_time_s": round(p.wall_time_s, 3), **{k: metrics.get(k) for k in self.metric_names}}
            p.history.append(row)
            if self.dist.is_main:
                self._end_epoch_files(epoch, weights, metrics)
            self._log_epoch(row, metrics)
            self._final_weights = weights
            barrier(self.dist)

    def _set_bn_mode(self, epoch: int) -> None:
        """Train the last `bn_freeze_epochs` with every BN layer in eval mode.

        With small batches (8 images on a CPU) the network learns to rely on each batch's own
        statistics, and in eval mode, with the running statistics, it can lose more than half its
        mAP (see the README). Training on for a while with the running statistics fixed lets the
        weights adapt to the statistics they will be evaluated with. The EMA restarts when the
        freeze starts, so the final weights average the frozen phase only. Everything follows
        from `epoch`, so a resumed run freezes (and restarts the EMA) exactly as an unbroken one.
        """
        first_frozen = self.cfg.epochs - self.cfg.bn_freeze_epochs
        if epoch < first_frozen:
            return
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        if epoch == first_frozen and self.ema is not None:
            self.ema.reset()
            self.log.info(f"epoch {epoch + 1}: BN statistics frozen for the last {self.cfg.bn_freeze_epochs} "
                          "epoch(s); the EMA restarts")

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, p = self.cfg, self.progress
        loader = self.loader
        loader.set_epoch(epoch)
        sums = dict.fromkeys((*LOSS_KEYS, "num_pos"), 0.0)
        images_seen, t0 = 0, time.perf_counter()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   file=sys.stderr, disable=None if self.dist.is_main else True)
        try:
            for i, (images, targets) in enumerate(loader):
                parts = self.train_step(images, targets)
                self._estimate_duration(epoch, i)
                for k in sums:
                    sums[k] += parts[k]
                images_seen += images.shape[0] * self.dist.world_size
                elapsed = time.perf_counter() - t0
                left = (cfg.epochs - epoch) * self.iters_per_epoch - (i + 1)
                eta = elapsed / (i + 1) * left
                stats = {"loss": parts["loss"], "vfl": parts["loss_vfl"], "giou": parts["loss_giou"],
                         "dfl": parts["loss_dfl"], "lr": self.schedule(p.step - 1)}
                bar.set_postfix({**{k: f"{v:.4g}" for k, v in stats.items()},
                                 "img/s": f"{images_seen / elapsed:.1f}", "eta": _fmt_duration(eta)}, refresh=False)
                bar.update()
                if (i + 1) % cfg.log_interval == 0:
                    if self._scalars is not None:
                        self._scalars.add("step", stats, p.step)
                    self.log.debug(f"epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{len(loader)} (global {p.step}) "
                                   + " ".join(f"{k} {v:.4f}" for k, v in stats.items())
                                   + f" img/s {images_seen / elapsed:.1f} eta {_fmt_duration(eta)}")
        finally:
            bar.close()
        n = len(loader)
        means = all_reduce_mean(self.dist, [sums[k] / n for k in (*LOSS_KEYS, "num_pos")])
        epoch_time = time.perf_counter() - t0
        return {**{k: round(v, 6) for k, v in zip((*LOSS_KEYS, "num_pos"), means)},
                "img_per_s": round(images_seen / epoch_time, 2), "epoch_time_s": round(epoch_time, 3)}

    def _estimate_duration(self, epoch: int, i: int) -> None:
        """Once per session, after its first ESTIMATE_STEPS[1] steps: the training time left, from
        the pace of the steps after the first ESTIMATE_STEPS[0] (which carry start-up costs); on a
        CPU, a warning with the flags that make the run practical when it exceeds CPU_WARN_S.
        Training goes on either way."""
        first, last = ESTIMATE_STEPS
        self._session_steps += 1
        if not self.dist.is_main or self._session_steps > last:
            return
        if self._session_steps == first:
            self._estimate_t0 = time.perf_counter()
        elif self._session_steps == last:
            per_step = (time.perf_counter() - self._estimate_t0) / (last - first)
            left = (self.cfg.epochs - epoch) * self.iters_per_epoch - (i + 1)
            seconds = per_step * left
            self.log.info(f"expected training time: {_fmt_duration(seconds)} for the {left} steps left "
                          f"({per_step:.2f} s/step; evaluations not included)")
            if self.device.type == "cpu" and seconds > CPU_WARN_S:
                self.log.warning(f"on this CPU the training takes about {_fmt_duration(seconds)}; a practical CPU "
                                 "run needs a smaller schedule (e.g. --epochs 20 --batch-size 8 --input-size 192 "
                                 "--lr 0.05, the quick start's scale) or a GPU (--device cuda); going on")

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        """One optimiser step on a batch: uint8 images as the loader gives them (normalised here,
        on the device) or float images already normalised; returns the loss parts, averaged
        over the step's networks."""
        p = self.progress
        set_lr(self.optimizer, self.schedule(p.step))
        self.optimizer.zero_grad(set_to_none=True)
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalize(images)
        boxes = [t["boxes"].to(self.device, non_blocking=True) for t in targets]
        labels = [t["labels"].to(self.device, non_blocking=True) for t in targets]
        passes = self.plan.networks(p.step)
        totals = dict.fromkeys((*LOSS_KEYS, "num_pos"), 0.0)
        distill = self.cfg.distill > 0 and getattr(self.plan, "teacher_first", False) and len(passes) > 1
        teacher = None
        losses: list[float] = []
        for i, net_pass in enumerate(passes):
            last = i == len(passes) - 1
            with self._gradient_sync(last):
                size = pass_size(images.shape[-1], self.plan.base_input_size, net_pass.input_size)
                x, bx = resize_batch(images, boxes, size)
                x = x.contiguous(memory_format=self.memory_format)
                with autocast(self.device, self.amp_dtype):
                    outs = self.net(x) if net_pass.arch is None else self.net(x, net_pass.arch)
                outs = [o.float() for o in outs]
                cls_logits, reg_logits, priors = flatten_outputs(outs, self.num_classes)
                loss, parts = self.loss_fn(cls_logits, reg_logits, priors, bx, labels)
                if distill and i == 0:
                    teacher = [o.detach() for o in outs]
                elif distill:
                    kd = inplace_distillation_loss(outs, teacher, self.num_classes)
                    loss = loss + self.cfg.distill * kd
                    totals["loss_kd"] += kd.item()
                losses.append(loss.item())
                if last:
                    self._check_finite(losses)
                self.scaler.scale(loss).backward()
            totals["loss"] += losses[-1]
            for k in ("loss_vfl", "loss_giou", "loss_dfl", "num_pos"):
                totals[k] += parts[k]
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        p.step += 1
        return {k: v / len(passes) for k, v in totals.items()}

    def _gradient_sync(self, last: bool):
        """Under DDP, the passes before a step's last one run under `no_sync`: their gradients
        accumulate locally and the last pass's backward all-reduces the sum, once per step."""
        if last or not isinstance(self.net, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.net.no_sync()

    def _check_finite(self, losses: Sequence[float]) -> None:
        """Raise `TrainingDiverged` on every rank, with the same message, when a loss of this
        step is not finite on any rank. Called before the backward that all-reduces the
        gradients: a rank that stopped alone would leave the others waiting in it."""
        own = next((v for v in losses if not math.isfinite(v)), 0.0)
        values = gather_floats(self.dist, own)
        ranks = [r for r, v in enumerate(values) if not math.isfinite(v)]
        if not ranks:
            return
        where = ""
        if self.dist.enabled:
            where = f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
        step = self.progress.step
        raise TrainingDiverged(f"training diverged: the loss is {values[ranks[0]]}{where} at step {step + 1} "
                               f"(lr {self.schedule(step):.4g}); lower --lr or lengthen the warm-up")

    # ---- epoch end ------------------------------------------------------------------
    def _eval_due(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval_interval == 0 or epoch + 1 == self.cfg.epochs

    @torch.no_grad()
    def _calibrate(self, epoch: int, weights: dict[str, torch.Tensor]) -> None:
        """Recompute the BN statistics of the epoch's weights in place (rank 0, when due; the
        caller then shares rank 0's weights with every rank).

        Not in the BN-frozen epochs: there the weights were trained against the fixed running
        statistics, eval mode reproduces the training forward pass exactly, and recomputing them
        would break that (on the BN-diagnosis data, 12 epochs with the last 3 frozen: mAP 0.084
        with the frozen statistics, 0.071 recomputed)."""
        if self.calibrate is None or not self.dist.is_main or not self._eval_due(epoch):
            return
        if self.cfg.bn_freeze_epochs and epoch >= self.cfg.epochs - self.cfg.bn_freeze_epochs:
            return
        t0 = time.perf_counter()
        self._eval_model.load_state_dict(weights)
        self.calibrate(self._eval_model)
        for name, buf in self._eval_model.named_buffers():
            if name in weights:
                weights[name] = buf.detach().clone()
        self.log.debug(f"BN recalibration took {time.perf_counter() - t0:.1f} s")

    def _evaluate(self, epoch: int, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The evaluator's numbers for the epoch's weights, on every rank (when due)."""
        if not (self._eval_due(epoch) and self.evaluator is not None):
            return {}
        self._eval_model.load_state_dict(weights)
        t0 = time.perf_counter()
        metrics = dict(self.evaluator(self._eval_model))
        self.log.debug(f"evaluation took {time.perf_counter() - t0:.1f} s")
        return metrics

    def _end_epoch_files(self, epoch: int, weights: dict[str, torch.Tensor], metrics: Mapping[str, float]) -> None:
        p = self.progress
        cpu_weights = {k: v.detach().cpu() for k, v in weights.items()}
        if self.best_metric and self.best_metric in metrics:
            value = metrics[self.best_metric]
            if p.best is None or value > p.best["value"]:
                p.best = {"metric": self.best_metric, "value": value, "epoch": epoch + 1}
                save_checkpoint(self.run_dir / "best.pt", cpu_weights, self.meta, epoch=epoch + 1,
                                metrics=dict(metrics))
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch + 1, cpu_weights, metrics)
        raw = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_checkpoint(self.run_dir / "last.pt", raw, self.meta, **self.state(cpu_weights))
        self._write_metrics_csv()

    def _log_epoch(self, row: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self._scalars is not None:  # x axis: the global step, as the per-step scalars
            self._scalars.add("epoch", {k: v for k, v in row.items() if k not in self.metric_names}, row["step"])
            self._scalars.add("eval", metrics, row["step"])
            self._scalars.flush()
        text = (f"epoch {row['epoch']}/{self.cfg.epochs} loss {row['loss']:.4f} (vfl {row['loss_vfl']:.4f} "
                f"giou {row['loss_giou']:.4f} dfl {row['loss_dfl']:.4f}) lr {row['lr']:.4g} "
                f"{row['img_per_s']:.1f} img/s, {row['epoch_time_s']:.1f} s")
        if metrics:
            text += " | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("mAP", "mAP50")))
        self.log.info(text)

    def _result(self, weights: Mapping[str, torch.Tensor]) -> FitResult:
        p = self.progress
        evaluated = [r for r in p.history if any(r.get(k) is not None for k in self.metric_names)]
        metrics = {k: evaluated[-1][k] for k in self.metric_names} if evaluated else {}
        return FitResult(epochs=p.epoch, weights={k: v.detach().cpu() for k, v in weights.items()},
                         history=p.history, metrics=metrics, best=p.best, wall_time_s=p.wall_time_s)
