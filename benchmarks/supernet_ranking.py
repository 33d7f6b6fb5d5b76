"""Does the supernet rank subnets as training them alone would? Two figures on the shapes data:

* **Rank correlation** (issue 7): Kendall's tau between the mAP a subnet scores inside the
  supernet (extracted, BN recalibrated, the exact scoring of `nas evolve`) and the mAP of the
  same architecture trained alone, over N architectures spread across the latency range
  (the largest, the smallest, and subnets nearest to evenly spaced predicted latencies), for a
  supernet trained with `uniform` and one trained with `sandwich` sampling.
* **Weight-sharing quality** (issue 4): the largest and the smallest subnet, inside the
  supernet, as a share of the mAP of the same architecture trained alone for the same number
  of optimiser steps (target >= 70%).

Every training is a real `nas train-supernet` / `nas retrain` subprocess with the quick start's
settings (`picodet_nas/configs/quickstart.yaml`: data size, epochs, batch, LR, warm-up) unless
flags say otherwise; stand-alone networks get the supernet's epochs and batch, i.e. the same
number of optimiser steps. Stages whose outputs exist are skipped, so an interrupted run
continues where it stopped.

    python benchmarks/supernet_ranking.py --out runs/bench/supernet_ranking.json
    python benchmarks/supernet_ranking.py --epochs 1 --archs 3 --train-images 64 --val-images 16 \\
        --strategies uniform --out runs/bench/supernet_ranking_smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from train_common import BENCH_ROOT, ensure_shapes, write_result

from evolution.data import prepare_subsets
from evolution.scoring import CandidateScorer
from picodet_nas.arch import Arch, save_arch
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.cli.quickstart_pipeline import CONFIG_FILE
from picodet_nas.data import resolve_data
from picodet_nas.latency.metrics import kendall_tau
from picodet_nas.latency.predictor import LatencyPredictor
from picodet_nas.space import load_space

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TABLE = REPO / "latency_tables" / "epyc-2vcpu-ort-t1-quickstart.json"


def pick_archs(space, predictor: LatencyPredictor, count: int, seed: int) -> list[Arch]:
    """The largest and smallest subnet, then the sampled subnets nearest to evenly spaced
    predicted latencies between them (deterministic for a seed)."""
    rng = random.Random(seed)
    pool = list({space.sample(rng) for _ in range(4000)})
    pool.sort(key=lambda a: (json.dumps(a.to_dict(), sort_keys=True)))
    lat = predictor.predict_many(pool)
    chosen = [space.largest(), space.smallest()]
    lo, hi = predictor.predict(space.smallest()), predictor.predict(space.largest())
    for target in np.linspace(lo, hi, count)[1:-1]:
        for i in np.argsort(np.abs(lat - target)):
            if pool[i] not in chosen:
                chosen.append(pool[i])
                break
    return chosen[:count]


def fmt_tau(tau: float | None) -> str:
    return "n/a (constant mAPs)" if tau is None else f"{tau:.3f}"


def run(cmd: list[str], threads: int | None) -> None:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        sys.exit(f"command failed (exit {r.returncode}): {' '.join(cmd)}")


def evolve_command(nas: list[str], supernet: Path, table: Path, budget_ms: float, data: Path, evolve: dict,
                   seed: int, out: Path) -> list[str]:
    """`nas evolve` under `budget_ms` with the search settings of a quickstart.yaml `evolve` section,
    scoring in this process (the other benchmarks share the cores)."""
    return nas + ["evolve", "--supernet", str(supernet), "--latency-table", str(table),
                  "--latency-budget", f"{budget_ms}ms", "--data", str(data), "--population", str(evolve["population"]),
                  "--parents", str(evolve["parents"]), "--mutations", str(evolve["mutations"]),
                  "--crossovers", str(evolve["crossovers"]), "--generations", str(evolve["generations"]),
                  "--calib-images", str(evolve["calib_images"]), "--val-images", str(evolve["val_images"]),
                  "--batch-size", str(evolve["batch_size"]), "--workers", "0", "--seed", str(seed),
                  "--no-progress", "--out", str(out)]


def last_row(metrics_csv: Path) -> dict:
    rows = list(csv.DictReader(metrics_csv.open()))
    return rows[-1]


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a shapes dataset (default: generated as the quick start's)")
    ap.add_argument("--train-images", type=int, default=qs["dataset"]["train"])
    ap.add_argument("--val-images", type=int, default=qs["dataset"]["val"])
    ap.add_argument("--image-size", type=int, default=qs["dataset"]["image_size"])
    ap.add_argument("--space", default=qs["space"])
    ap.add_argument("--latency-table", type=Path, default=DEFAULT_TABLE,
                    help="table that places the architectures on the latency range")
    ap.add_argument("--strategies", nargs="+", default=["uniform", "sandwich"], choices=["uniform", "sandwich"])
    ap.add_argument("--archs", type=int, default=8, help="architectures compared (default: 8)")
    ap.add_argument("--epochs", type=int, default=qs["supernet"]["epochs"])
    ap.add_argument("--batch-size", type=int, default=qs["supernet"]["batch_size"])
    ap.add_argument("--lr", type=float, default=qs["supernet"]["lr"])
    ap.add_argument("--warmup-iters", type=int, default=qs["supernet"]["warmup_iters"])
    ap.add_argument("--calib-images", type=int, default=qs["evolve"]["calib_images"],
                    help="training images for BN recalibration when scoring in the supernet")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, help="where the runs go (default: runs/bench/supernet-ranking-<settings>)")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    data = args.data or ensure_shapes(args.train_images, args.val_images, args.image_size, args.seed)
    run_dir = args.run_dir or BENCH_ROOT / (f"supernet-ranking-{args.space}-e{args.epochs}-b{args.batch_size}"
                                            f"-{args.train_images}-s{args.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    space = load_space(args.space)
    predictor = LatencyPredictor.from_file(args.latency_table)
    space.check_fingerprint(predictor.space.fingerprint, f"latency table {args.latency_table}")
    archs = pick_archs(space, predictor, args.archs, args.seed)
    nas = [sys.executable, "-m", "picodet_nas.cli.main"]
    common = ["--data", str(data), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--warmup-iters", str(args.warmup_iters), "--eval-interval", str(args.epochs),
              "--workers", "0", "--seed", str(args.seed)]

    # -- stand-alone training of every architecture, the same steps as the supernet --------------
    standalone = []
    for i, arch in enumerate(archs):
        out = run_dir / f"standalone-{i}"
        if not (out / "metrics.json").is_file():
            save_arch(arch, run_dir / f"arch-{i}.yaml")
            run(nas + ["retrain", str(run_dir / f"arch-{i}.yaml"), *common, "--device", "cpu",
                       "--no-measure-latency", "--out", str(out)], args.threads)
        m = json.loads((out / "metrics.json").read_text())
        standalone.append({"mAP": m["coco"]["mAP"], "steps": int(last_row(out / "metrics.csv")["step"])})

    # -- one supernet per sampling rule, every architecture scored inside it ---------------------
    subsets = prepare_subsets(resolve_data(data), run_dir / "subsets", calib_images=args.calib_images,
                              val_images=None, seed=args.seed, batch_size=16)
    results = {}
    for strategy in args.strategies:
        out = run_dir / f"supernet-{strategy}"
        if not (out / "supernet.pt").is_file() or int(last_row(out / "metrics.csv")["epoch"]) < args.epochs:
            resume = ["--resume"] if (out / "last.pt").is_file() else []
            run(nas + ["train-supernet", "--space", args.space, *common, "--strategy", strategy,
                       "--calib-images", str(args.calib_images), "--out", str(out), *resume], args.threads)
        state, meta = load_model_weights(out / "supernet.pt")
        scorer = CandidateScorer(space.to_dict(), int(meta["num_classes"]), state, subsets.data, threads=args.threads)
        scored = [scorer.score(a)["map"] for a in archs]
        steps = int(last_row(out / "metrics.csv")["step"])
        alone = [s["mAP"] for s in standalone]
        share = {name: (scored[k] / alone[k] if alone[k] > 0 else None) for k, name in ((0, "largest"), (1, "smallest"))}
        tau = kendall_tau(scored, alone)
        results[strategy] = {"steps": steps, "supernet_mAP": scored, "kendall_tau": None if math.isnan(tau) else tau,
                             "share_of_standalone": share}

    rows = [{"arch": a.to_dict(), "predicted_ms": round(predictor.predict(a), 4), "standalone_mAP": s["mAP"],
             "standalone_steps": s["steps"],
             **{f"{k}_mAP": results[k]["supernet_mAP"][i] for k in results}}
            for i, (a, s) in enumerate(zip(archs, standalone))]
    print()
    head = f"{'#':>2} {'pred ms':>8} {'alone':>7} " + " ".join(f"{k:>9}" for k in results)
    print(head)
    for i, r in enumerate(rows):
        label = {0: " (largest)", 1: " (smallest)"}.get(i, "")
        print(f"{i:>2} {r['predicted_ms']:>8.3f} {r['standalone_mAP']:>7.4f} "
              + " ".join(f"{r[f'{k}_mAP']:>9.4f}" for k in results) + label)
    for k, v in results.items():
        share = v["share_of_standalone"]
        fmt = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
        print(f"{k}: Kendall tau {fmt_tau(v['kendall_tau'])} over {len(archs)} archs ({v['steps']} supernet steps); "
              f"largest {fmt(share['largest'])}, smallest {fmt(share['smallest'])} of stand-alone mAP "
              f"(target >= 70%)")
    write_result(args.out, {
        "benchmark": "supernet_ranking", "space": args.space, "data": str(data), "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "warmup_iters": args.warmup_iters,
        "calib_images": args.calib_images, "val_images": subsets.val_images, "threads": args.threads,
        "seed": args.seed, "archs": rows, "strategies": results, "run_dir": str(run_dir),
        "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
