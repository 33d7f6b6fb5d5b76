"""Training throughput: images per second and peak memory of one training step of picodet-s
(the engine's own step: PicoDet loss with SimOTA, backward, SGD, cycle-EMA update) at several
input sizes, on this CPU or a GPU.

Every size runs in a fresh process that builds only its own model, optimiser and EMA, so the
memory figure is that size's alone: on a CPU the peak resident memory during the steps minus
the resident memory before the model was built (the kernel's VmHWM after resetting it through
/proc/self/clear_refs); on a GPU `torch.cuda.max_memory_allocated`. The batches are fixed
synthetic images with 6 boxes each, in the engine's default layout (channels-last). Data loading
is not timed: in a real CPU run it adds about 2.7 ms per image to the step (decoding and
augmentation, done in the training process by default).

    python benchmarks/train_throughput.py --sizes 160 320 416 --batch 16 --out runs/bench/train_throughput.json
    python benchmarks/train_throughput.py --device cuda --batch 128 --amp bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * size * 0.7
        wh = (torch.rand(6, 2, generator=g) * 0.3 + 0.05) * size
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(0, num_classes, (6,), generator=g)})
    return images, targets


def child(args: argparse.Namespace) -> dict:
    """Time `args.steps` engine steps at one size in this process; print the result as JSON."""
    from picodet_nas.arch import resolve_arch
    from picodet_nas.data import make_shapes_dataset
    from picodet_nas.data.coco import CocoDetection
    from picodet_nas.engine import StaticPlan, TrainConfig, Trainer
    from picodet_nas.engine.distributed import DistInfo, resolve_device
    from picodet_nas.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    size = args.child
    arch = resolve_arch(args.arch, size)
    with tempfile.TemporaryDirectory() as tmp:
        # The trainer wants a dataset for its loader; two tiny images suffice (batches are synthetic).
        data = make_shapes_dataset(Path(tmp) / "d", train=2, val=1, image_size=64)
        dataset = CocoDetection(data / "annotations" / "instances_train.json", data / "images")
        images, targets = synthetic_batch(args.batch, size, dataset.num_classes)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = _rss_kb("VmRSS")
        peak_reset = _reset_peak()
        cfg = TrainConfig.for_arch(arch, batch_size=1, epochs=1, warmup_iters=0, lr=0.01, device=device.type,
                                   amp=args.amp, workers=0)
        trainer = Trainer(build_model(arch, dataset.num_classes), StaticPlan(size), cfg, dataset, tmp,
                          DistInfo(0, 1, 0, device), meta={})
        times = []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step(images, targets)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak_mb = (_rss_kb("VmHWM") - before) / 1024 if peak_reset else float("nan")
    step = statistics.median(times)
    return {"input_size": size, "batch": args.batch, "step_ms_median": round(1000 * step, 1),
            "step_ms_min": round(1000 * min(times), 1), "img_per_s": round(args.batch / step, 2),
            "peak_memory_mb": round(peak_mb, 1), "threads": torch.get_num_threads(), "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="picodet-s")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 320, 416])
    ap.add_argument("--batch", type=int, default=16, help="images per step (default: 16)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per size (default: 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    ap.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--arch", args.arch, "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--amp", args.amp,
               "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ORT_DISABLE_TELEMETRY": "1"})
        if r.returncode != 0:
            sys.exit(f"size {size} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{args.arch} training step, batch {args.batch}, {rows[0]['device']}, {rows[0]['threads']} thread(s)")
    print(f"{'input':>6} {'img/s':>8} {'step ms':>9} {'peak MB':>9}")
    for row in rows:
        print(f"{row['input_size']:>6} {row['img_per_s']:>8.2f} {row['step_ms_median']:>9.1f} "
              f"{row['peak_memory_mb']:>9.1f}")
    if args.out:
        result = {"benchmark": "train_throughput", "arch": args.arch, "results": rows,
                  "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "torch": torch.__version__},
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
