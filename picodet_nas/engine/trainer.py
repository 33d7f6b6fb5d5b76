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
weights (on a GPU, with `deterministic`). Files are written by rank 0 only (`run_record`).

Under DDP: the gradients are all-reduced once per step, in the backward of its last pass (the
other passes run under `no_sync` and accumulate locally); before that backward the ranks
compare their losses, so a non-finite loss on any rank stops every rank at once with the same
`TrainingDiverged`; at each epoch end every rank takes rank 0's epoch weights (BN statistics
drift apart between ranks), rank 0 alone recalibrates them, and all ranks share the evaluation.
`sync_bn` turns the BN layers into SyncBatchNorm (GPUs only).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import apply_state, deployed_weights
from ..data import CocoDetection, build_train_loader, normalize
from ..errors import CheckpointError, UserError
from ..losses import PicoDetLoss, inplace_distillation_loss
from ..models import flatten_outputs
from ..utils.tensorboard import ScalarLog, require_tensorboard
from .config import TrainConfig
from .distributed import (DistInfo, all_reduce_mean, barrier, broadcast_from_main, convert_sync_bn, gradient_sync,
                          non_finite_ranks)
from .ema import CycleEMA
from .epoch_scoring import EpochScoring, Evaluator
from .optim import build_optimizer, set_lr
from .pace import DurationEstimate, EpochBar
from .plan import StepPlan, pass_size, resize_batch
from .precision import autocast, resolve_amp
from .run_record import LOSS_KEYS, EpochFiles, FitResult, TrainProgress, cpu_copy, epoch_summary
from .schedule import LRSchedule
from .state import capture_rng, restore_rng, set_deterministic

RESUME_KEYS = ("model", "ema", "optimizer", "scaler", "rng", "epoch", "step", "wall_time_s", "history", "best")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the recipe (usually the LR) does not suit this run."""


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
        self.log = logger or logging.getLogger("picodet_nas.run")
        self.device = dist_info.device
        cfg.check_device(self.device)
        if cfg.deterministic:
            set_deterministic()
        self.amp_dtype = resolve_amp(cfg.amp, self.device)

        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.num_classes = model.num_classes
        self.scoring = EpochScoring(self.model, cfg, dist_info, self.log, evaluator=evaluator, calibrate=calibrate)
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
        self.progress = TrainProgress()
        self._final_weights: dict[str, torch.Tensor] = {}
        self.metric_names = tuple(evaluator.names) if evaluator is not None else ()
        self.files = EpochFiles(self.run_dir, self.meta, self.metric_names, best_metric, on_epoch_end)
        if cfg.tensorboard:
            require_tensorboard()  # before any work, not after the first epoch
        self._scalars: ScalarLog | None = None
        self._pace = DurationEstimate(self.device, self.log)  # one estimate per session

    # ---- checkpoints ----------------------------------------------------------------
    def state(self, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Everything `last.pt` holds besides `meta` and the raw `model` weights."""
        p = self.progress
        return {
            "ema": cpu_copy(weights),
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
        lacking = [k for k in RESUME_KEYS if k not in ckpt]
        if lacking:
            raise CheckpointError(f"{source}: not a training checkpoint (it lacks {', '.join(lacking)}); "
                                  f"--resume continues from the last.pt of a run")
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
        self.progress = TrainProgress(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]),
                                      wall_time_s=float(ckpt["wall_time_s"]), history=list(ckpt["history"]),
                                      best=ckpt["best"])
        self._final_weights = deployed_weights(ckpt)

    # ---- the loop -------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg, p = self.cfg, self.progress
        if p.epoch >= cfg.epochs:
            self.log.info(f"all {cfg.epochs} epochs were already trained")
            return self.progress.result(self._final_weights, self.metric_names)
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
        return self.progress.result(self._final_weights, self.metric_names)

    def _fit_epochs(self, session_start: float, session_wall: float) -> None:
        cfg, p = self.cfg, self.progress
        for epoch in range(p.epoch, cfg.epochs):
            self._set_bn_mode(epoch)
            losses = self._train_epoch(epoch)
            weights = self.ema.end_epoch(self.model) if self.ema else {
                k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.scoring.calibrate(epoch, weights)
            broadcast_from_main(self.dist, weights.values())  # every rank: rank 0's (recalibrated) weights
            metrics = self.scoring.evaluate(epoch, weights)
            p.epoch, p.wall_time_s = epoch + 1, session_wall + time.perf_counter() - session_start
            row = {"epoch": epoch + 1, "step": p.step, "lr": self.schedule(max(p.step - 1, 0)), **losses,
                   "wall_time_s": round(p.wall_time_s, 3), **{k: metrics.get(k) for k in self.metric_names}}
            p.history.append(row)
            if self.dist.is_main:
                self.files.write(p, epoch, weights, metrics, self.model, self.state)
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
        bar = EpochBar(epoch, cfg.epochs, len(loader), self.log, cfg.log_interval, enabled=self.dist.is_main,
                       scalars=self._scalars)
        try:
            for i, (images, targets) in enumerate(loader):
                parts = self.train_step(images, targets)
                left = (cfg.epochs - epoch) * self.iters_per_epoch - (i + 1)
                if self.dist.is_main:
                    self._pace.step_done(left)
                for k in sums:
                    sums[k] += parts[k]
                stats = {"loss": parts["loss"], "vfl": parts["loss_vfl"], "giou": parts["loss_giou"],
                         "dfl": parts["loss_dfl"], "lr": self.schedule(p.step - 1)}
                bar.step_done(i, images.shape[0] * self.dist.world_size, stats, p.step, left)
        finally:
            bar.close()
        n = len(loader)
        means = all_reduce_mean(self.dist, [sums[k] / n for k in (*LOSS_KEYS, "num_pos")])
        epoch_time = time.perf_counter() - bar.t0
        return {**{k: round(v, 6) for k, v in zip((*LOSS_KEYS, "num_pos"), means)},
                "img_per_s": round(bar.images / epoch_time, 2), "epoch_time_s": round(epoch_time, 3)}

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
            with gradient_sync(self.net, last):
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

    def _check_finite(self, losses: Sequence[float]) -> None:
        """Raise `TrainingDiverged` on every rank, with the same message, when a loss of this
        step is not finite on any rank. Called before the backward that all-reduces the
        gradients: a rank that stopped alone would leave the others waiting in it."""
        values, ranks = non_finite_ranks(self.dist, losses)
        if not ranks:
            return
        where = ""
        if self.dist.enabled:
            where = f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
        step = self.progress.step
        raise TrainingDiverged(f"training diverged: the loss is {values[ranks[0]]}{where} at step {step + 1} "
                               f"(lr {self.schedule(step):.4g}); lower --lr or lengthen the warm-up")

    def _log_epoch(self, row: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self._scalars is not None:  # x axis: the global step, as the per-step scalars
            self._scalars.add("epoch", {k: v for k, v in row.items() if k not in self.metric_names}, row["step"])
            self._scalars.add("eval", metrics, row["step"])
            self._scalars.flush()
        self.log.info(epoch_summary(row, metrics, self.cfg.epochs))

