"""What the training benchmarks share: the shapes data, a throughput probe to size epochs to a
time budget, running `nas retrain` as a subprocess, and reading its learning curve."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BENCH_ROOT = Path("runs/bench")
REAL_OVER_PROBE = 0.65  # training img/s over the probe's (see epochs_for_budget)


def ensure_shapes(train: int, val: int, size: int = 320, seed: int = 0, path: Path | None = None) -> Path:
    """The shapes dataset of these counts (generated once under runs/bench/)."""
    from picodet_nas.data import make_shapes_dataset

    path = path or BENCH_ROOT / f"shapes-{train}-{val}-{size}-s{seed}"
    if not (path / "annotations" / "instances_val.json").is_file():
        print(f"writing shapes dataset {path} ({train} train / {val} val at {size} px)", flush=True)
        make_shapes_dataset(path, train=train, val=val, image_size=size, seed=seed)
    return path


def count_train_images(data: Path) -> int:
    from picodet_nas.data import resolve_data

    return len(json.loads(resolve_data(data).train_ann.read_text())["images"])


def probe_img_per_s(arch: str | Path, batch: int, input_size: int, threads: int) -> float:
    """Training images/s of the engine's step (benchmarks/train_throughput.py, 3 timed steps)."""
    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--arch", str(arch), "--sizes", str(input_size),
           "--batch", str(batch), "--steps", "3", "--warmup", "1", "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"throughput probe failed:\n{r.stderr[-3000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.split() and ln.split()[0] == str(input_size)][-1]
    return float(line.split()[1])


def epochs_for_budget(budget_s: float, img_per_s: float, train_images: int) -> int:
    """Epochs that fit the budget. The probe times synthetic batches of one fixed size; real
    training also decodes and augments, and draws multi-scale sizes up to +64 px. Measured here
    (picodet-s at 192, batch 8, 2 cores): 0.67x the probe with NCHW and a worker process (41.8
    img/s probed, 28 trained); 0.8-1.0x with channels-last and no worker (probes of 38.4 and
    46.5 img/s, 38.2 trained), so the factor errs short. The probe of 3 steps is noisy; pass
    --epochs to the benchmarks for a fixed schedule."""
    return max(1, math.floor(REAL_OVER_PROBE * budget_s * img_per_s / train_images))


def run_retrain(arch: str | Path, data: Path, run_dir: Path, *, input_size: int, epochs: int, batch_size: int,
                lr: float | None, warmup_iters: int, seed: int, threads: int, workers: int,
                eval_interval: int = 1, bn_freeze_epochs: int = 0, grad_clip: float = 0.0,
                extra: list[str] | tuple[str, ...] = ()) -> float:
    """`nas retrain` with these explicit settings (and `extra` flags); returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "picodet_nas.cli.main", "retrain", str(arch), "--data", str(data),
           "--input-size", str(input_size), "--epochs", str(epochs), "--batch-size", str(batch_size),
           "--warmup-iters", str(warmup_iters), "--eval-interval", str(eval_interval), "--workers", str(workers),
           "--seed", str(seed), "--device", "cpu", "--bn-freeze-epochs", str(bn_freeze_epochs),
           "--grad-clip", str(grad_clip), "--out", str(run_dir), *extra]
    if lr is not None:
        cmd += ["--lr", str(lr)]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        sys.exit(f"nas retrain failed (exit {r.returncode})")
    return time.perf_counter() - t0


def add_bn_freeze_flags(ap, freeze_epochs: int = 0, grad_clip: float = 0.0) -> None:
    """The `nas retrain` flags against the small-batch BN discrepancy (see the README)."""
    ap.add_argument("--bn-freeze-epochs", type=int, default=freeze_epochs,
                    help=f"train the last N epochs with BN on its running statistics (default: {freeze_epochs})")
    ap.add_argument("--grad-clip", type=float, default=grad_clip,
                    help=f"max global gradient norm (default: {grad_clip:g}; 0: none)")


def read_curve(run_dir: Path) -> list[dict]:
    """Per epoch: cumulative training time (without evaluation), wall time, loss, mAP, mAP50."""
    curve, train_time = [], 0.0
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        train_time += float(row["epoch_time_s"])
        point = {"epoch": int(row["epoch"]), "train_time_s": round(train_time, 1),
                 "wall_time_s": float(row["wall_time_s"]), "loss": float(row["loss"])}
        if row.get("mAP"):
            point.update(mAP=float(row["mAP"]), mAP50=float(row["mAP50"]))
        curve.append(point)
    return curve


def print_curve(curve: list[dict]) -> None:
    print(f"{'epoch':>5} {'train s':>8} {'loss':>7} {'mAP':>7} {'mAP50':>7}")
    for p in curve:
        print(f"{p['epoch']:>5} {p['train_time_s']:>8.0f} {p['loss']:>7.3f} {p.get('mAP', float('nan')):>7.4f} "
              f"{p.get('mAP50', float('nan')):>7.4f}")


def write_result(path: str | None, result: dict) -> None:
    if not path:
        return
    from picodet_nas.latency.run_bundle import cpu_model

    result = {**result, "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                                    "platform": platform.platform(), "torch": torch.__version__},
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def eval_vs_batch_stats(model_file: Path, arch: str | Path, data: Path, input_size: int,
                        batch_size: int = 8) -> dict:
    """mAP of a trained model on the validation split in eval mode, as `nas eval` scores it (its
    saved BN statistics), and with every BN normalising with each evaluation batch's own statistics
    (batches of `batch_size` validation images, in dataset order); and their ratio."""
    from bn_batch_stats import with_batch_stats

    from picodet_nas.data import resolve_data
    from picodet_nas.data.coco import CocoDetection
    from picodet_nas.engine.evaluate import evaluate_coco
    from picodet_nas.engine.trained import load_trained_model

    paths = resolve_data(data)
    val = CocoDetection(paths.val_ann, paths.val_images)
    model, _, _ = load_trained_model(arch, model_file, input_size)
    eval_mode = evaluate_coco(model, val, input_size, batch_size=batch_size)["mAP"]
    with_batch_stats(model, "")
    batch_stats = evaluate_coco(model, val, input_size, batch_size=batch_size)["mAP"]
    out = {"eval_mode_mAP": eval_mode, "batch_stats_mAP": batch_stats,
           "ratio": eval_mode / batch_stats if batch_stats > 0 else None, "batch_size": batch_size}
    print(f"eval mode (as nas eval) mAP {eval_mode:.4f}; with the batch statistics of {batch_size} images "
          f"{batch_stats:.4f}" + (f"; ratio {out['ratio']:.3f}" if out["ratio"] is not None else ""), flush=True)
    return out
