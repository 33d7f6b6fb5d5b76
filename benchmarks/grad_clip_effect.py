"""Does clipping the gradient norm help the supernet? The quick start's uniform supernet, trained
with and without `--grad-clip` for each seed on the same data, everything else equal; the
largest and smallest subnets scored by the supernet's own final evaluation (exact BN statistics
on `--calib-images` training images, mAP on the search split). Prints the paired differences
and a paired t-test over the seeds (scipy.stats.ttest_rel); trains only the supernets a
folder lacks, so it resumes after a kill and reuses the supernets of `supernet_ranking.py`
with the same `--run-dir` pattern.

    python benchmarks/grad_clip_effect.py --seeds 1 2 3 4 --clip 5 --threads 1 \
        --data runs/bench/shapes-480-80-192-s0 --calib-images 256 \
        --out benchmarks/results/grad_clip_effect_quickstart.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from fidelity_summary import LANDMARKS, paired_test
from supernet_ranking import last_row, run, supernet_dirname
from train_common import ensure_shapes, write_result

from picodet_nas.cli.quickstart_config import CONFIG_FILE

NUM_RANDOM = 2  # passed as supernet_ranking.py passes it; the uniform rule does not use it


def supernet(data: Path, out: Path, seed: int, clip: float, args) -> dict:
    """The final row of the supernet's metrics.csv, training it first when it is not complete."""
    csv_path = out / "metrics.csv"
    if not (out / "supernet.pt").is_file() or int(last_row(csv_path)["epoch"]) < args.epochs:
        resume = ["--resume"] if (out / "last.pt").is_file() else []
        run([sys.executable, "-m", "picodet_nas.cli.main", "train-supernet", "--space", "quickstart",
             "--data", str(data), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
             "--warmup-iters", str(args.warmup_iters), "--eval-interval", str(args.epochs), "--workers", "0",
             "--seed", str(seed), "--calib-images", str(args.calib_images), "--lr", str(args.lr),
             "--grad-clip", str(clip), "--strategy", "uniform", "--num-random", str(NUM_RANDOM),
             "--search-fraction", str(args.search_fraction), "--out", str(out), *resume], args.threads)
    row = last_row(csv_path)
    return {"dir": str(out), "steps": int(row["step"]), "train_seconds": float(row["wall_time_s"]),
            **{f"{k}_mAP": float(row[f"{k}_mAP"]) for k in LANDMARKS}}


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--clip", type=float, default=5.0, help="the clipped supernets' max gradient norm")
    ap.add_argument("--data", type=Path, help="a shapes dataset (default: generated as the quick start's)")
    ap.add_argument("--epochs", type=int, default=qs["supernet"]["epochs"])
    ap.add_argument("--batch-size", type=int, default=qs["supernet"]["batch_size"])
    ap.add_argument("--lr", type=float, default=qs["supernet"]["lr"])
    ap.add_argument("--warmup-iters", type=int, default=qs["supernet"]["warmup_iters"])
    ap.add_argument("--search-fraction", type=float, default=qs["supernet"]["search_fraction"])
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run-dir", default="runs/bench/fidelity-clip-s{seed}",
                    help="folder of each seed's supernets ({seed} is replaced)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.clip <= 0:
        ap.error("--clip: expected a norm above 0")
    d = qs["dataset"]
    data = args.data or ensure_shapes(d["train"], d["val"], d["image_size"], 0)
    started = time.perf_counter()
    rows = []
    for seed in args.seeds:
        base = Path(args.run_dir.format(seed=seed)) / supernet_dirname("uniform", NUM_RANDOM)
        rows.append({"seed": seed, "no_clip": supernet(data, base, seed, 0.0, args),
                     "clip": supernet(data, base.with_name(f"{base.name}-clip{args.clip:g}"), seed, args.clip, args)})
    effect = {}
    for k in LANDMARKS:
        off = np.array([r["no_clip"][f"{k}_mAP"] for r in rows])
        on = np.array([r["clip"][f"{k}_mAP"] for r in rows])
        effect[k] = {"no_clip_mean": float(off.mean()), "clip_mean": float(on.mean()),
                     "ratio_of_means": float(on.mean() / off.mean()), **paired_test(on, off)}
    print(f"\nuniform supernet, {args.epochs} epochs; mAP on the search split ({args.calib_images} calibration images)")
    print("seed | largest: no clip / clip | smallest: no clip / clip")
    for r in rows:
        print(f"{r['seed']} | {r['no_clip']['largest_mAP']:.4f} / {r['clip']['largest_mAP']:.4f} | "
              f"{r['no_clip']['smallest_mAP']:.4f} / {r['clip']['smallest_mAP']:.4f}")
    for k, e in effect.items():
        tp = "" if e["t"] is None else f", t {e['t']:.2f}, p {e['p']:.3f} ({e['df']} df)"
        print(f"{k}: {e['no_clip_mean']:.4f} -> {e['clip_mean']:.4f} (x{e['ratio_of_means']:.2f}), higher on "
              f"{e['seeds_higher']} of {len(rows)} seeds{tp}")
    write_result(args.out, {"benchmark": "grad_clip_effect", "command": " ".join(sys.argv), "data": str(data),
                            "clip": args.clip, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                            "calib_images": args.calib_images, "search_fraction": args.search_fraction,
                            "threads": args.threads, "seeds": rows, "effect": effect,
                            "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
