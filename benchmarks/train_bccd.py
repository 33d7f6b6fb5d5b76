"""`nas retrain` on the real BCCD blood-cell set (../shared/datasets/bccd, 292 train / 72 val
images of 640x480, three classes) for a fixed CPU budget: the learning curve and final COCO
numbers on real data. Skips with a message when the dataset is absent.

    python benchmarks/train_bccd.py --budget-min 15 --out runs/bench/bccd.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from train_common import (BENCH_ROOT, add_bn_freeze_flags,
                          count_train_images, epochs_for_budget, print_curve, probe_img_per_s,
                          read_curve, run_retrain, write_result)

DEFAULT_BCCD = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "bccd"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_BCCD, help=f"BCCD folder (default: {DEFAULT_BCCD})")
    ap.add_argument("--budget-min", type=float, default=15.0, help="training time budget in minutes (default: 15)")
    ap.add_argument("--arch", default="picodet-s")
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, help="peak LR (default: linear scaling, 0.4 x batch / 512)")
    ap.add_argument("--warmup-iters", type=int, default=20)
    ap.add_argument("--epochs", type=int, help="override the epochs sized from the throughput probe")
    ap.add_argument("--eval-interval", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result JSON here")
    add_bn_freeze_flags(ap)
    args = ap.parse_args()

    if not (args.data / "annotations" / "instances_train.json").is_file():
        print(f"skipped: the BCCD dataset is not at {args.data} (see ../shared/README.md)")
        sys.exit(0)
    train_images = count_train_images(args.data)
    if args.epochs is None:
        img_s = probe_img_per_s(args.arch, args.batch_size, args.input_size, args.threads)
        epochs = epochs_for_budget(60 * args.budget_min, img_s, train_images)
        print(f"probe: {img_s:.1f} img/s -> {epochs} epochs of {train_images} images in {args.budget_min:g} min")
    else:
        epochs = args.epochs
    run_dir = BENCH_ROOT / f"bccd-{time.strftime('%Y%m%d-%H%M%S')}"
    total_s = run_retrain(args.arch, args.data, run_dir, input_size=args.input_size, epochs=epochs,
                          batch_size=args.batch_size, lr=args.lr, warmup_iters=args.warmup_iters, seed=args.seed,
                          threads=args.threads, workers=args.workers, eval_interval=args.eval_interval,
                          bn_freeze_epochs=args.bn_freeze_epochs, grad_clip=args.grad_clip)
    curve = read_curve(run_dir)
    print()
    print_curve(curve)
    final = json.loads((run_dir / "metrics.json").read_text())
    print(f"final: mAP {final['coco']['mAP']:.4f}, mAP50 {final['coco']['mAP50']:.4f} after {epochs} epochs "
          f"({curve[-1]['train_time_s']:.0f} s of training)")
    write_result(args.out, {"benchmark": "train_bccd", "arch": args.arch, "input_size": args.input_size,
                            "batch_size": args.batch_size, "lr": args.lr, "epochs": epochs,
                            "budget_s": 60 * args.budget_min, "coco": final["coco"], "curve": curve,
                            "run_dir": str(run_dir), "total_time_s": round(total_s, 1)})


if __name__ == "__main__":
    main()
