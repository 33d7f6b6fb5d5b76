"""Does width matter on the shapes data? The narrowest (every ESNet block at ratio 0.5) and the
widest (every block at 1.0) ESNet-S PicoDet, trained alike on the same CPU budget with two
seeds each: the mAP gap between them against the spread between seeds.

Both networks get the same recipe and the same number of epochs, sized so that the widest
(the slower) fits the budget; the narrow one therefore finishes early. A search space is only
worth searching on this data when the gap clearly exceeds the seed spread (otherwise the
supernet ranking that the search relies on is noise).

    python benchmarks/train_width_gap.py --budget-min 15 --out runs/bench/width_gap.json
    python benchmarks/train_width_gap.py --budget-min 1 --train-images 100 --val-images 20 --seeds 0   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from train_common import (BENCH_ROOT, add_bn_freeze_flags,
                          count_train_images, ensure_shapes, epochs_for_budget, probe_img_per_s,
                          read_curve, run_retrain, write_result)

from picodet_nas.arch import save_arch
from picodet_nas.space import load_space

WIDTHS = {"narrow": 0.5, "wide": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a shapes dataset (default: generated under runs/bench/)")
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--budget-min", type=float, default=15.0, help="training budget per run in minutes (default: 15)")
    ap.add_argument("--space", default="esnet_s", help="the space whose uniform 0.5 / 1.0 subnets are compared")
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, help="peak LR (default: linear scaling, 0.4 x batch / 512)")
    ap.add_argument("--warmup-iters", type=int, default=20)
    ap.add_argument("--epochs", type=int, help="override the epochs sized from the throughput probe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    ap.add_argument("--out", help="write the result JSON here")
    add_bn_freeze_flags(ap)
    args = ap.parse_args()

    data = args.data or ensure_shapes(args.train_images, args.val_images)
    space = load_space(args.space)
    bench = BENCH_ROOT / f"width-gap-{time.strftime('%Y%m%d-%H%M%S')}"
    bench.mkdir(parents=True, exist_ok=True)
    arch_files = {}
    for name, ratio in WIDTHS.items():
        arch_files[name] = bench / f"{name}.yaml"
        save_arch(space.uniform(ratio).replace(input_size=args.input_size), arch_files[name])
    if args.epochs is None:
        img_s = probe_img_per_s(arch_files["wide"], args.batch_size, args.input_size, args.threads)
        epochs = epochs_for_budget(60 * args.budget_min, img_s, count_train_images(data))
        print(f"probe (wide): {img_s:.1f} img/s -> {epochs} epochs for both widths")
    else:
        epochs = args.epochs

    runs = []
    for seed in args.seeds:
        for name in WIDTHS:
            run_dir = bench / f"{name}-seed{seed}"
            run_retrain(arch_files[name], data, run_dir, input_size=args.input_size, epochs=epochs,
                        batch_size=args.batch_size, lr=args.lr, warmup_iters=args.warmup_iters, seed=seed,
                        threads=args.threads, workers=args.workers, eval_interval=epochs,
                        bn_freeze_epochs=args.bn_freeze_epochs, grad_clip=args.grad_clip)
            final = read_curve(run_dir)[-1]
            runs.append({"width": name, "ratio": WIDTHS[name], "seed": seed, "mAP": final["mAP"],
                         "mAP50": final["mAP50"], "train_time_s": final["train_time_s"], "run_dir": str(run_dir)})

    means = {n: statistics.mean(r["mAP"] for r in runs if r["width"] == n) for n in WIDTHS}
    spreads = {n: max(r["mAP"] for r in runs if r["width"] == n) - min(r["mAP"] for r in runs if r["width"] == n)
               for n in WIDTHS}
    gap = means["wide"] - means["narrow"]
    spread = max(spreads.values())
    print(f"\n{'width':>7} {'seed':>5} {'mAP':>7} {'mAP50':>7} {'train s':>8}")
    for r in runs:
        print(f"{r['width']:>7} {r['seed']:>5} {r['mAP']:>7.4f} {r['mAP50']:>7.4f} {r['train_time_s']:>8.0f}")
    print(f"gap (wide - narrow) {gap:+.4f} mAP; largest seed spread {spread:.4f}: "
          + ("the gap exceeds the seed spread" if abs(gap) > spread else "the gap is within the seed spread"))
    write_result(args.out, {"benchmark": "train_width_gap", "space": space.name, "epochs": epochs,
                            "batch_size": args.batch_size, "lr": args.lr, "input_size": args.input_size,
                            "budget_s": 60 * args.budget_min, "runs": runs, "mean_mAP": means,
                            "seed_spread": spreads, "gap": gap, "gap_exceeds_spread": abs(gap) > spread})


if __name__ == "__main__":
    main()
