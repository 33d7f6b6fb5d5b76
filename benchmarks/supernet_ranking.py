"""Does the supernet rank subnets as training them alone would? Two figures on the shapes data:

* **Rank correlation** (issue 7): Kendall's tau between the mAP a subnet scores inside the
  supernet (extracted, exact BN statistics, the scoring of `nas evolve`) and the mAP of the
  same architecture trained alone on the same images and scored the same way (the same
  calibration images, the supernets' search split), over N architectures spread across the latency range
  (the largest, the smallest, and subnets nearest to evenly spaced predicted latencies), for a
  supernet trained with `uniform` and one trained with `sandwich` sampling.
* **Weight-sharing quality** (issue 4): the largest and the smallest subnet, inside the
  supernet, as a share of the mAP of the same architecture trained alone for the same number
  of optimiser steps; and the tau of two free proxies (params, FLOPs).

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
from evolution.scoring import CandidateScorer, NetworkScorer
from picodet_nas.arch import Arch, save_arch
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.cli.quickstart_config import CONFIG_FILE
from picodet_nas.data import resolve_data
from picodet_nas.engine.trained import load_trained_model
from picodet_nas.summary import count_macs, count_params
from picodet_nas.latency.metrics import kendall_tau
from picodet_nas.latency.predictor import LatencyPredictor
from picodet_nas.space import load_space
from supernet.sampling import DEFAULT_CORRELATION, STRATEGIES

REPO = Path(__file__).resolve().parent.parent
# every sampling rule, and the sandwich with in-place distillation
STRATEGY_FLAGS = {**{rule: ["--strategy", rule] for rule in STRATEGIES},
                  "sandwich-kd": ["--strategy", "sandwich", "--distill", "1.0"]}
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


def ranking_dir(space: str, epochs: int, batch_size: int, train_images: int, search_fraction: float,
                seed: int) -> Path:
    """Where this benchmark keeps its runs for these settings (the other benchmarks reuse its supernets)."""
    return BENCH_ROOT / f"supernet-ranking-{space}-e{epochs}-b{batch_size}-{train_images}-f{search_fraction:g}-s{seed}"


def supernet_dirname(strategy: str, num_random: int, correlation: float = DEFAULT_CORRELATION) -> str:
    """The folder of a supernet recipe: `supernet-uniform`, `supernet-sandwich-r2`,
    `supernet-correlated-c0.5`, ... (the number of random subnets per step or cycle matters for
    the sandwich rules, the correlation for the correlated one)."""
    if strategy == "uniform":
        return "supernet-uniform"
    if strategy == "correlated":
        return f"supernet-correlated-c{correlation:g}"
    return f"supernet-{strategy}-r{num_random}"


def recipe_flags(strategy: str, num_random: int, correlation: float) -> list[str]:
    """The `nas train-supernet` flags of a recipe of `--strategies`."""
    extra = ["--correlation", str(correlation)] if strategy == "correlated" else []
    return [*STRATEGY_FLAGS[strategy], "--num-random", str(num_random), *extra]


def quickstart_supernet(qs: dict, space: str, seed: int, strategy: str = "uniform") -> Path:
    """The supernet.pt this benchmark trains with the quick start's settings."""
    ds, sn = qs["dataset"], qs["supernet"]
    return ranking_dir(space, sn["epochs"], sn["batch_size"], ds["train"], sn["search_fraction"], seed) / \
        supernet_dirname(strategy, sn.get("num_random", 2)) / "supernet.pt"


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


def standalone_data(split: dict, images: Path, out: Path) -> Path:
    """A simple-layout dataset of a supernet's split: the images it trained on as the training split,
    its search split as the validation split (images linked, not copied)."""
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for name, key in (("instances_train.json", "train_ann"), ("instances_val.json", "held_out_ann")):
        (out / "annotations" / name).write_text(Path(split[key]).read_text())
    link = out / "images"
    if not link.exists():
        link.symlink_to(Path(images).resolve(), target_is_directory=True)
    return out


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
    ap.add_argument("--strategies", nargs="+", default=["uniform", "sandwich"], choices=list(STRATEGY_FLAGS),
                    help="supernet recipes: uniform, sandwich, sandwich-kd (sandwich with --distill 1), "
                         "alternating (largest, smallest, random ones on successive steps)")
    ap.add_argument("--num-random", type=int, default=qs["supernet"].get("num_random", 2),
                    help="random subnets per sandwich step (per alternating cycle)")
    ap.add_argument("--correlation", type=float, default=DEFAULT_CORRELATION,
                    help="gene correlation of the correlated rule (nas train-supernet --correlation)")
    ap.add_argument("--archs", type=int, default=8, help="architectures compared (default: 8)")
    ap.add_argument("--epochs", type=int, default=qs["supernet"]["epochs"])
    ap.add_argument("--batch-size", type=int, default=qs["supernet"]["batch_size"])
    ap.add_argument("--lr", type=float, default=qs["supernet"]["lr"])
    ap.add_argument("--supernet-lr", type=float,
                    help="the supernets' peak learning rate, when it differs from the stand-alone networks' --lr "
                         "(their folders then end in -lrX)")
    ap.add_argument("--grad-clip", type=float, default=qs["supernet"].get("grad_clip", 0.0),
                    help="gradient-norm clipping of every network, supernets and stand-alone ones (--grad-clip of "
                         "nas train-supernet and nas retrain; 0: none); above 0 their folders end in -clipX")
    ap.add_argument("--supernet-grad-clip", type=float,
                    help="the supernets' gradient clipping, when it differs from the stand-alone networks' "
                         "--grad-clip (their folders then end in -clipX for X above 0, in nothing for 0)")
    ap.add_argument("--warmup-iters", type=int, default=qs["supernet"]["warmup_iters"])
    ap.add_argument("--search-fraction", type=float, default=qs["supernet"]["search_fraction"],
                    help="training images the supernets hold out as the search split, which everything is scored on")
    ap.add_argument("--calib-images", type=int, default=qs["evolve"]["calib_images"],
                    help="training images for the exact BN statistics of every scored network")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, help="where the runs go (default: runs/bench/supernet-ranking-<settings>)")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    data = args.data or ensure_shapes(args.train_images, args.val_images, args.image_size, args.seed)
    run_dir = args.run_dir or ranking_dir(args.space, args.epochs, args.batch_size, args.train_images,
                                          args.search_fraction, args.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    space = load_space(args.space)
    predictor = LatencyPredictor.from_file(args.latency_table)
    space.check_fingerprint(predictor.space.fingerprint, f"latency table {args.latency_table}")
    archs = pick_archs(space, predictor, args.archs, args.seed)
    nas = [sys.executable, "-m", "picodet_nas.cli.main"]
    schedule = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                "--warmup-iters", str(args.warmup_iters), "--eval-interval", str(args.epochs), "--workers", "0",
                "--seed", str(args.seed), "--calib-images", str(args.calib_images)]

    # -- one supernet per sampling rule; each holds out the same search split -------------------
    supernets, split = {}, None
    supernet_lr = args.lr if args.supernet_lr is None else args.supernet_lr
    supernet_tag = "" if supernet_lr == args.lr else f"-lr{supernet_lr:g}"
    supernet_clip = args.grad_clip if args.supernet_grad_clip is None else args.supernet_grad_clip
    clip_tag = f"-clip{args.grad_clip:g}" if args.grad_clip else ""
    supernet_tag += f"-clip{supernet_clip:g}" if supernet_clip else ""
    for strategy in args.strategies:
        out = run_dir / (supernet_dirname(strategy, args.num_random, args.correlation) + supernet_tag)
        if not (out / "supernet.pt").is_file() or int(last_row(out / "metrics.csv")["epoch"]) < args.epochs:
            resume = ["--resume"] if (out / "last.pt").is_file() else []
            run(nas + ["train-supernet", "--space", args.space, "--data", str(data), *schedule,
                       "--lr", str(supernet_lr), "--grad-clip", str(supernet_clip),
                       *recipe_flags(strategy, args.num_random, args.correlation),
                       "--search-fraction", str(args.search_fraction),
                       "--out", str(out), *resume], args.threads)
        state, meta = load_model_weights(out / "supernet.pt")
        if split is not None and meta["search_split"]["held_out_ids"] != split["held_out_ids"]:
            sys.exit(f"{out}: another search split than the first supernet's")
        split = meta["search_split"]
        supernets[strategy] = (out, state, meta)

    # -- stand-alone training of every architecture on the images the supernets trained on --------
    alone_data = standalone_data(split, resolve_data(data).train_images, run_dir / "standalone-data")
    subsets = prepare_subsets(resolve_data(data), run_dir / "subsets", calib_images=args.calib_images,
                              val_images=None, seed=args.seed, batch_size=16, held_out_ids=split["held_out_ids"])
    scorer = NetworkScorer(subsets.data)
    standalone = []
    for i, arch in enumerate(archs):
        out = run_dir / f"standalone-{i}{clip_tag}"
        if not (out / "metrics.json").is_file():
            save_arch(arch, run_dir / f"arch-{i}.yaml")
            run(nas + ["retrain", str(run_dir / f"arch-{i}.yaml"), "--data", str(alone_data), *schedule, "--lr", str(args.lr),
                       "--grad-clip", str(args.grad_clip),
                       "--device", "cpu", "--no-measure-latency", "--out", str(out)], args.threads)
        model, _, _ = load_trained_model(arch, out / "model.pt")
        standalone.append({"mAP": scorer.score(model, arch.input_size)["mAP"],
                           "steps": int(last_row(out / "metrics.csv")["step"]),
                           "params": count_params(model), "flops": 2.0 * sum(count_macs(model, arch.input_size).values())})
    alone = [s["mAP"] for s in standalone]

    # -- every architecture scored inside each supernet, as nas evolve scores ------------------------
    results = {}
    for strategy, (out, state, meta) in supernets.items():
        candidates = CandidateScorer(space.to_dict(), int(meta["num_classes"]), state, subsets.data,
                                     threads=args.threads)
        scored = [candidates.score(a)["map"] for a in archs]
        steps = int(last_row(out / "metrics.csv")["step"])
        share = {name: (scored[k] / alone[k] if alone[k] > 0 else None) for k, name in ((0, "largest"), (1, "smallest"))}
        tau = kendall_tau(scored, alone)
        results[strategy] = {"steps": steps, "supernet_mAP": scored, "kendall_tau": None if math.isnan(tau) else tau,
                             "share_of_standalone": share}
    proxies = {}
    for proxy in ("params", "flops"):
        tau = kendall_tau([s[proxy] for s in standalone], alone)
        proxies[proxy] = None if math.isnan(tau) else tau

    rows = [{"arch": a.to_dict(), "predicted_ms": round(predictor.predict(a), 4), "standalone_mAP": s["mAP"],
             "standalone_steps": s["steps"], "params": s["params"], "flops": s["flops"],
             **{f"{k}_mAP": results[k]["supernet_mAP"][i] for k in results}}
            for i, (a, s) in enumerate(zip(archs, standalone))]
    print(f"\nscored on the supernets' search split: {subsets.val_images} held-out training images; exact BN "
          f"statistics on {subsets.calib_images} training images for every network")
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
              f"largest {fmt(share['largest'])}, smallest {fmt(share['smallest'])} of stand-alone mAP")
    print("proxies: Kendall tau of params " + fmt_tau(proxies["params"]) + ", of FLOPs " + fmt_tau(proxies["flops"]))
    write_result(args.out, {
        "benchmark": "supernet_ranking", "command": " ".join(sys.argv), "space": args.space, "data": str(data),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "supernet_lr": supernet_lr,
        "grad_clip": args.grad_clip, "supernet_grad_clip": supernet_clip, "warmup_iters": args.warmup_iters,
        "search_fraction": args.search_fraction, "num_random": args.num_random, "correlation": args.correlation,
        "calib_images": subsets.calib_images, "scored_images": subsets.val_images, "threads": args.threads,
        "seed": args.seed, "archs": rows, "strategies": results, "proxy_kendall_tau": proxies,
        "run_dir": str(run_dir), "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
