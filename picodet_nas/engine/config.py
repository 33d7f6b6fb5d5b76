"""The training recipe as one flat, immutable config, with the published defaults.

Defaults are PP-PicoDet's recipe: SGD momentum 0.9, weight decay
4e-5, 300 warm-up iterations from 0.1x, per-iteration cosine over the max-epoch horizon,
cycle-EMA 0.9998 reset every 40 epochs, multi-scale training at input +-64 px in steps of 32,
evaluation every 10 epochs. Epochs, per-process batch and base LR depend on the model size
and are filled in by `TrainConfig.for_arch`:

| family | epochs (cosine horizon) | batch per process (320 / 416 / 640) | base LR at global batch |
|---|---|---|---|
| S (scale <= 0.75) | 300 (300) | 128 / 80 / 80 | 0.4 at 512 |
| M (scale 1.0)     | 300 (300) | 128 / 80 / 80 | 0.4 at 512 |
| L (scale >= 1.25) | 250 (300) | 56 / 48 / 32  | 0.3 at 256 |

The peak LR is the base LR scaled linearly with the actual global batch (per-process batch
x processes), unless `lr` is given, which is then used as is.

Small runs (tests, the quick start, benchmarks) pass their settings explicitly; the
defaults are never shrunk.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..arch import Arch
from ..data.transforms import INTERPOLATION_MODES
from .bn_calibration import DEFAULT_CALIB_IMAGES
from ..errors import UserError

AMP_MODES = ("auto", "none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MULTISCALE_OFFSETS = (-64, -32, 0, 32, 64)

# (family, published input size) -> per-GPU batch
_PUBLISHED_BATCH = {
    ("S", 320): 128, ("S", 416): 80, ("S", 640): 80,
    ("M", 320): 128, ("M", 416): 80, ("M", 640): 80,
    ("L", 320): 56, ("L", 416): 48, ("L", 640): 32,
}
_PUBLISHED_SIZES = (320, 416, 640)


def recipe_family(arch: Arch) -> str:
    """'S', 'M' or 'L': the published model whose recipe applies (by backbone scale)."""
    if arch.scale >= 1.25:
        return "L"
    return "M" if arch.scale >= 1.0 else "S"


def multiscale_sizes(input_size: int) -> tuple[int, ...]:
    """Training sizes of the batch-random resize: 320 -> 256..384 in steps of 32."""
    return tuple(input_size + d for d in MULTISCALE_OFFSETS if input_size + d >= 32)


def data_workers(workers: int | None, device: Any) -> int:
    """Data-loading worker processes on `device` (a torch.device or its name): `workers` when
    given; else none on a CPU and min(4, cores) on a GPU.

    On a CPU the training threads already use every core, and a worker process that takes one
    of them stalls the others at every parallel region, which costs more than the augmentation
    the worker would take off them.
    """
    if workers is not None:
        return workers
    return min(4, os.cpu_count() or 1) if getattr(device, "type", str(device)) == "cuda" else 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's numbers (and a few things that do not:
    workers, logging). Saved in the run directory and in every checkpoint; a resumed run
    takes it from the checkpoint."""

    epochs: int = 300
    batch_size: int = 128  # per process
    lr: float | None = None  # peak LR; None: base_lr x global batch / reference_batch
    base_lr: float = 0.4
    reference_batch: int = 512
    input_size: int = 320
    train_sizes: tuple[int, ...] = field(default_factory=lambda: multiscale_sizes(320))
    warmup_iters: int = 300
    warmup_start: float = 0.1
    cosine_epochs: int = 300
    momentum: float = 0.9
    weight_decay: float = 4e-5
    ema: bool = True
    ema_decay: float = 0.9998
    ema_warmup: int = 10
    ema_cycle_epochs: int = 40
    distill: float = 0.0  # supernet sandwich steps: weight of in-place distillation from the largest subnet
    calib_images: int = DEFAULT_CALIB_IMAGES  # training images for the exact BN statistics of the evaluated weights; 0: none
    ema_buffers: bool = True  # average the BN running statistics with the weights (False: take the model's)
    train_interp: str = "batch"  # interpolation filter: "batch" (one per batch), "image" (per image) or a name
    eval_interval: int = 10
    eval_batch_size: int = 8
    workers: int | None = None  # data-loading processes; None: `data_workers` picks by device
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    bn_freeze_epochs: int = 0  # the last N epochs train with BN in eval mode (its running statistics)
    grad_clip: float = 0.0  # max global gradient norm; 0: no clipping
    channels_last: bool = True  # NHWC activations: faster depthwise convolutions on a CPU than NCHW
    log_interval: int = 20
    tensorboard: bool = False  # also write TensorBoard scalars into run_dir/tensorboard (optional extra)
    sync_bn: bool = False  # under DDP, BN statistics over the global batch (SyncBatchNorm; GPUs only)
    deterministic: bool = False  # deterministic kernels (torch, cuDNN, cuBLAS): exact resume on a GPU

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_sizes", tuple(int(s) for s in self.train_sizes))
        self.validate()

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def for_arch(cls, arch: Arch, **overrides: Any) -> "TrainConfig":
        """The published recipe of the model family of `arch`, then `overrides` (None = unset).

        Giving `epochs` without `cosine_epochs` makes the cosine horizon follow it, so a short
        run still decays its LR; giving `input_size` moves the multi-scale sizes with it.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown training option {unknown[0]!r}")
        family = recipe_family(arch)
        size = int(overrides.get("input_size", arch.input_size))
        nearest = min(_PUBLISHED_SIZES, key=lambda s: abs(s - size))
        values: dict[str, Any] = {
            "epochs": 250 if family == "L" else 300,
            "cosine_epochs": 300,
            "batch_size": _PUBLISHED_BATCH[(family, nearest)],
            "base_lr": 0.3 if family == "L" else 0.4,
            "reference_batch": 256 if family == "L" else 512,
            "input_size": size,
            "train_sizes": multiscale_sizes(size),
        }
        if "epochs" in overrides and "cosine_epochs" not in overrides:
            values["cosine_epochs"] = overrides["epochs"]
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train_sizes"] = list(self.train_sizes)
        return d

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    # ---- derived --------------------------------------------------------------------
    def peak_lr(self, world_size: int = 1) -> float:
        """The LR after warm-up: `lr` if given, else the base LR scaled to the global batch."""
        if self.lr is not None:
            return float(self.lr)
        return self.base_lr * self.batch_size * world_size / self.reference_batch

    def data_workers(self, device: Any) -> int:
        """Data-loading worker processes on `device` (see the module's `data_workers`)."""
        return data_workers(self.workers, device)

    def check_device(self, device: Any) -> None:
        """Refuse options that cannot work on `device` (a torch.device or its name)."""
        if self.sync_bn and getattr(device, "type", str(device)) != "cuda":
            raise UserError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on the CPU "
                            "(leave --sync-bn out, or train with --device cuda)")

    # ---- validation -----------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise UserError(f"{name.replace('_', '-')} must be {what}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name in ("epochs", "batch_size", "reference_batch", "cosine_epochs", "eval_interval",
                     "eval_batch_size", "log_interval"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("warmup_iters", "seed", "ema_warmup", "ema_cycle_epochs", "bn_freeze_epochs"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        need(is_num(self.distill) and self.distill >= 0, "distill", "a number >= 0 (0: no distillation)")
        need(is_int(self.calib_images) and self.calib_images >= 0, "calib_images", "an integer >= 0")
        need(self.workers is None or (is_int(self.workers) and self.workers >= 0), "workers", "an integer >= 0")
        need(self.lr is None or (is_num(self.lr) and self.lr > 0), "lr", "a positive number")
        need(is_num(self.base_lr) and self.base_lr > 0, "base_lr", "a positive number")
        need(is_num(self.warmup_start) and 0 <= self.warmup_start <= 1, "warmup_start", "in [0, 1]")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(is_num(self.ema_decay) and 0 < self.ema_decay < 1, "ema_decay", "in (0, 1)")
        need(isinstance(self.ema, bool), "ema", "true or false")
        need(isinstance(self.channels_last, bool), "channels_last", "true or false")
        need(isinstance(self.tensorboard, bool), "tensorboard", "true or false")
        need(isinstance(self.ema_buffers, bool), "ema_buffers", "true or false")
        need(isinstance(self.sync_bn, bool), "sync_bn", "true or false")
        need(isinstance(self.deterministic, bool), "deterministic", "true or false")
        need(self.train_interp in INTERPOLATION_MODES, "train_interp", f"one of {', '.join(INTERPOLATION_MODES)}")
        need(is_num(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a number >= 0 (0: no clipping)")
        need(self.bn_freeze_epochs == 0 or self.bn_freeze_epochs < self.epochs, "bn_freeze_epochs",
             f"0 or less than --epochs ({self.epochs}; the first epochs estimate the statistics it freezes)")
        need(is_int(self.input_size) and self.input_size % 32 == 0 and self.input_size >= 64, "input_size",
             "a multiple of 32, at least 64")
        need(bool(self.train_sizes) and all(s % 32 == 0 and s >= 32 for s in self.train_sizes), "train_sizes",
             "a non-empty list of multiples of 32")
        need(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        need(self.amp in AMP_MODES, "amp", f"one of {', '.join(AMP_MODES)}")
