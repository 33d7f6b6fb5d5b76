"""The ground truth a supernet's ranking is judged against: architectures of a space, each
trained alone with several seeds and scored with the one scoring function of every reported
number (`evolution.scoring.NetworkScorer`: exact BN statistics on augmented training images,
COCO mAP on the search split).

The architectures are fixed before anything is trained, from the latency table alone: the
space's largest and smallest, and `--levels` latency levels evenly spaced between them with
`--per-level` architectures each that spend about the same predicted latency differently
(on input size, on channel width, on kernels, neck and head). They train on the training
images a supernet of the same seed and search fraction trains on, and are scored on the
images it holds out, so their scores compare with the supernet's candidate scores.

Reported: every architecture's mAP per seed, mean and seed spread (max - min); the gap between
the largest and the smallest architecture against 3x the largest seed spread (the schedule
must separate them); the seed-to-seed Kendall tau (the ranking one seed gives of the other,
the ceiling any scorer can reach); and the same-level pairs whose means differ by more than
both architectures' seed spreads (the pairs a scorer should order).

The largest and smallest architectures train first, with every seed, so whether the schedule
separates them is known after the first runs. `--jobs N` trains N runs at once, each with
`--threads / N` threads; the mAPs do not depend on it (each run is deterministic for its seed).
Runs are kept under the run folder and reused, and the JSON is rewritten after every run, so
an interrupted benchmark resumes where it stopped. When the run folder is gone, `--reuse FILE`
takes the finished runs' scores from an earlier result JSON of the same architectures, recipe,
data and calibration, and trains only the missing runs:

    python benchmarks/ground_truth.py --epochs 30 --out benchmarks/results/ground_truth.json
    python benchmarks/ground_truth.py --epochs 30 --reuse benchmarks/results/ground_truth.json --out new.json
    python benchmarks/ground_truth.py --select-only        # print the architectures and stop
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import numpy as np
import yaml
from train_common import BENCH_ROOT, ensure_shapes, write_result

from evolution.data import prepare_subsets
from evolution.scoring import NetworkScorer
from picodet_nas.arch import Arch, save_arch
from picodet_nas.cli.quickstart_config import CONFIG_FILE
from picodet_nas.data import CocoDetection, resolve_data
from picodet_nas.data.split import held_out_indices, remaining_indices, subset_doc
from picodet_nas.engine.trained import load_trained_model
from picodet_nas.latency.metrics import kendall_tau
from picodet_nas.latency.predictor import LatencyPredictor
from picodet_nas.space import SearchSpace, load_space

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TABLE = REPO / "latency_tables" / "epyc-2vcpu-ort-t1-quickstart.json"
PROFILES = ("input size", "width", "kernel+neck+head")
LEVEL_TOLERANCE = 0.03  # an architecture of a level is within 3% of its predicted latency


def candidate_pool(space: SearchSpace, seed: int, count: int = 30000) -> list[Arch]:
    """Architectures covering the space's whole latency range: each draws a favourite choice
    per gene group and keeps it for most genes (plain uniform sampling piles up in the middle)."""
    rng = random.Random(seed)
    pool = set()
    for _ in range(count):
        keep = rng.random()
        favourite: dict[str, object] = {}
        genome = []
        for gene in space.genes:
            group = gene.name.split(".")[0]  # channel_ratio.3 -> channel_ratio
            if group not in favourite:
                favourite[group] = rng.choice(gene.choices)
            pick = favourite[group] if rng.random() < keep and favourite[group] in gene.choices \
                else rng.choice(gene.choices)
            genome.append(pick)
        pool.add(space.decode(genome))
    return sorted(pool, key=lambda a: json.dumps(a.to_dict(), sort_keys=True))


def spending(arch: Arch, space: SearchSpace) -> dict[str, float]:
    """Where an architecture spends its latency, each in [0, 1] over the space's choices."""
    def norm(value, choices):
        lo, hi = min(choices), max(choices)
        return 0.0 if hi == lo else (value - lo) / (hi - lo)

    c = space.choices
    width = float(np.mean([norm(r, c["channel_ratio"]) for r in arch.channel_ratio])) if "channel_ratio" in c else 0.0
    parts = []
    if "kernel_size" in c:
        parts.append(float(np.mean([norm(k, c["kernel_size"]) for k in arch.kernel_size])))
    for key in ("neck_channels", "head_convs"):
        if key in c:
            parts.append(norm(getattr(arch, key), c[key]))
    size = norm(arch.input_size, c["input_size"]) if "input_size" in c else 0.0
    return {"input size": size, "width": width, "kernel+neck+head": float(np.mean(parts)) if parts else 0.0}


def pick_archs(space: SearchSpace, predictor: LatencyPredictor, levels: int, per_level: int, seed: int
               ) -> list[dict]:
    """[{arch, level, profile, predicted_ms}]: largest and smallest (levels "max", "min"), then per
    latency level the architectures within LEVEL_TOLERANCE of it that spend the most on each
    profile relative to the others (deterministic for a seed)."""
    pool = candidate_pool(space, seed)
    lat = predictor.predict_many(pool)
    lo, hi = predictor.predict(space.smallest()), predictor.predict(space.largest())
    chosen = [{"arch": space.largest(), "level": "max", "profile": "largest"},
              {"arch": space.smallest(), "level": "min", "profile": "smallest"}]
    taken = {space.largest(), space.smallest()}
    for k, target in enumerate(np.linspace(lo, hi, levels + 2)[1:-1]):
        near = [a for a, t in zip(pool, lat) if abs(t - target) <= LEVEL_TOLERANCE * target and a not in taken]
        if len(near) < per_level:
            raise SystemExit(f"only {len(near)} architectures within {LEVEL_TOLERANCE:.0%} of {target:.3f} ms")
        scores = [spending(a, space) for a in near]
        for profile in PROFILES[:per_level]:
            others = [p for p in PROFILES if p != profile]
            order = sorted(range(len(near)), key=lambda i: (-(scores[i][profile]
                                                              - max(scores[i][o] for o in others)), i))
            best = next(near[i] for i in order if near[i] not in taken)
            taken.add(best)
            chosen.append({"arch": best, "level": k + 1, "profile": profile})
    for c in chosen:
        c["predicted_ms"] = round(predictor.predict(c["arch"]), 4)
    return chosen


def standalone_data(train_set: CocoDetection, held: list[int], images: Path, out: Path) -> Path:
    """A simple-layout dataset: the supernet's training part as training split, its search
    split as validation split (images linked, not copied)."""
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rest = remaining_indices(len(train_set), held)
    for name, idx in (("instances_train.json", rest), ("instances_val.json", held)):
        (out / "annotations" / name).write_text(json.dumps(subset_doc(train_set, idx, True)))
    link = out / "images"
    if not link.exists():
        link.symlink_to(Path(images).resolve(), target_is_directory=True)
    return out


def summarise(rows: list[dict], seeds: list[int]) -> dict:
    done = [r for r in rows if all(str(s) in r["mAP"] for s in seeds)]
    for r in done:
        values = [r["mAP"][str(s)] for s in seeds]
        r["mean"], r["spread"] = statistics.mean(values), max(values) - min(values)
    out: dict = {"complete_archs": len(done)}
    if len(done) < 2:
        return out
    by_level = {r["level"]: r for r in done if r["level"] in ("max", "min")}
    max_spread = max(r["spread"] for r in done)
    if {"max", "min"} <= by_level.keys():
        gap = by_level["max"]["mean"] - by_level["min"]["mean"]
        out["largest_minus_smallest"] = gap
        out["max_seed_spread"] = max_spread
        out["gap_over_max_spread"] = gap / max_spread if max_spread > 0 else None
    taus = [kendall_tau([r["mAP"][str(a)] for r in done], [r["mAP"][str(b)] for r in done])
            for a, b in combinations(seeds, 2)]
    out["seed_to_seed_kendall_tau"] = statistics.mean(taus) if not any(math.isnan(t) for t in taus) else None
    pairs = []
    for a, b in combinations(range(len(done)), 2):
        ra, rb = done[a], done[b]
        if ra["level"] == rb["level"] and ra["level"] not in ("max", "min") \
                and abs(ra["mean"] - rb["mean"]) > max(ra["spread"], rb["spread"]):
            pairs.append([ra["index"], rb["index"]])
    out["separable_same_level_pairs"] = pairs
    return out


REUSE_MUST_MATCH = ("space", "latency_table", "data_seed", "search_fraction", "train_images", "scored_images",
                    "calib_images", "recipe")


def reused_scores(path: Path, result: dict) -> dict[tuple[int, int], tuple[float, float | None]]:
    """{(arch, seed): (mAP, wall time)} of the finished runs in the earlier result `path`, which must
    be of the same architectures, recipe, data and calibration as this run (`result`)."""
    earlier = json.loads(path.read_text())
    for key in REUSE_MUST_MATCH:
        if earlier.get(key) != result[key]:
            sys.exit(f"{path}: its {key} is {earlier.get(key)!r}, this run's is {result[key]!r}; cannot reuse it")
    ours = [{k: v for k, v in r.items() if k not in ("mAP", "wall_time_s")} for r in result["archs"]]
    theirs = [{k: v for k, v in r.items() if k in ours[0]} for r in earlier["archs"]]
    if theirs != ours:
        sys.exit(f"{path}: its architectures differ from this run's; cannot reuse it")
    return {(i, int(seed)): (score, r.get("wall_time_s", {}).get(seed))
            for i, r in enumerate(earlier["archs"]) for seed, score in r["mAP"].items()
            if int(seed) in result["seeds"]}


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=qs["space"])
    ap.add_argument("--latency-table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--per-level", type=int, default=3, choices=(1, 2, 3))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of every architecture")
    ap.add_argument("--train-images", type=int, default=qs["dataset"]["train"])
    ap.add_argument("--val-images", type=int, default=qs["dataset"]["val"])
    ap.add_argument("--image-size", type=int, default=qs["dataset"]["image_size"])
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the shapes data and of the search split")
    ap.add_argument("--search-fraction", type=float, default=qs["supernet"]["search_fraction"])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=qs["supernet"]["batch_size"])
    ap.add_argument("--lr", type=float, default=qs["supernet"]["lr"])
    ap.add_argument("--warmup-iters", type=int, default=qs["supernet"]["warmup_iters"])
    ap.add_argument("--calib-images", type=int, default=qs["evolve"]["calib_images"])
    ap.add_argument("--grad-clip", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of all runs together")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--reuse", type=Path, help="an earlier result JSON of the same benchmark whose finished "
                    "runs' scores are kept (their runs are not retrained)")
    ap.add_argument("--select-only", action="store_true", help="print the architectures and stop")
    ap.add_argument("--out", help="write the result JSON here (also rewritten after every run)")
    args = ap.parse_args()

    started = time.perf_counter()
    space = load_space(args.space)
    predictor = LatencyPredictor.from_file(args.latency_table)
    space.check_fingerprint(predictor.space.fingerprint, f"latency table {args.latency_table}")
    chosen = pick_archs(space, predictor, args.levels, args.per_level, args.data_seed)
    print(f"{'#':>2} {'level':>5} {'profile':<17} {'pred ms':>8}  arch")
    for i, c in enumerate(chosen):
        c["index"] = i
        a = c["arch"]
        print(f"{i:>2} {c['level']!s:>5} {c['profile']:<17} {c['predicted_ms']:>8.3f}  size {a.input_size} "
              f"ratio {np.mean(a.channel_ratio):.2f} kernel {np.mean(a.kernel_size):.2f} neck {a.neck_channels} "
              f"head {a.head_convs}")
    if args.select_only:
        return

    data = ensure_shapes(args.train_images, args.val_images, args.image_size, args.data_seed)
    run_dir = args.run_dir or BENCH_ROOT / (f"ground-truth-{args.space}-{args.train_images}-f{args.search_fraction:g}"
                                            f"-e{args.epochs}-b{args.batch_size}-s{args.data_seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    archs_file = run_dir / "archs.json"
    listed = [{**{k: v for k, v in c.items() if k != "arch"}, "arch": c["arch"].to_dict()} for c in chosen]
    if archs_file.is_file() and json.loads(archs_file.read_text()) != listed:
        sys.exit(f"{archs_file}: the runs there are of other architectures; use another --run-dir")
    archs_file.write_text(json.dumps(listed, indent=1))

    paths = resolve_data(data)
    train_set = CocoDetection(paths.train_ann, paths.train_images)
    held = held_out_indices(len(train_set), args.search_fraction, args.data_seed)
    alone = standalone_data(train_set, held, paths.train_images, run_dir / "data")
    subsets = prepare_subsets(paths, run_dir / "scoring", calib_images=args.calib_images, val_images=None,
                              seed=args.data_seed, batch_size=16,
                              held_out_ids=[train_set.image_ids[i] for i in held])
    scorer = NetworkScorer(subsets.data)
    nas = [sys.executable, "-m", "picodet_nas.cli.main"]
    jobs = max(1, min(args.jobs, args.threads))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // jobs))}
    rows = [{**c, "mAP": {}, "wall_time_s": {}} for c in listed]
    result = {"benchmark": "ground_truth", "command": " ".join(sys.argv), "space": args.space, "data": str(data),
              "latency_table": str(args.latency_table), "data_seed": args.data_seed,
              "search_fraction": args.search_fraction,
              "train_images": len(train_set) - len(held), "scored_images": subsets.val_images,
              "calib_images": subsets.calib_images, "recipe": {k: getattr(args, k) for k in (
                  "epochs", "batch_size", "lr", "warmup_iters", "grad_clip")}, "seeds": args.seeds, "archs": rows,
              "run_dir": str(run_dir)}
    reused = reused_scores(args.reuse, result) if args.reuse else {}

    def train(i: int, seed: int) -> Path:
        out = run_dir / f"a{i}-s{seed}"
        if not (out / "model.pt").is_file():
            cmd = nas + ["retrain", str(run_dir / f"arch-{i}.yaml"), "--data", str(alone),
                         "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                         "--warmup-iters", str(args.warmup_iters), "--grad-clip", str(args.grad_clip),
                         "--eval-interval", str(args.epochs), "--workers", "0", "--seed", str(seed),
                         "--device", "cpu", "--no-measure-latency", "--out", str(out)] \
                + (["--resume"] if (out / "last.pt").is_file() else [])
            print("$ " + " ".join(cmd), flush=True)
            log = (run_dir / f"a{i}-s{seed}.out").open("w") if jobs > 1 else None
            if subprocess.run(cmd, env=env, stdout=log, stderr=log).returncode != 0:
                raise SystemExit(f"nas retrain failed for architecture {i}, seed {seed}")
        return out

    for i, c in enumerate(chosen):
        save_arch(c["arch"], run_dir / f"arch-{i}.yaml")
    # the extremes with every seed first (do they separate?), then seed-major
    extremes = [i for i, c in enumerate(chosen) if c["level"] in ("max", "min")]
    order = [(i, s) for s in args.seeds for i in extremes] + \
        [(i, s) for s in args.seeds for i in range(len(chosen)) if i not in extremes]
    pool = ThreadPoolExecutor(jobs)
    futures = [((i, seed), pool.submit(train, i, seed)) for i, seed in order if (i, seed) not in reused]
    for (i, seed), (score, wall) in reused.items():
        rows[i]["mAP"][str(seed)], rows[i]["wall_time_s"][str(seed)] = score, wall
    if reused:
        result["reused_from"] = str(args.reuse)
        print(f"reused {len(reused)} runs' scores from {args.reuse}; {len(futures)} to train", flush=True)
    try:
        for (i, seed), future in futures:  # scored in order, each as soon as its run is done
            out = future.result()
            model, _, _ = load_trained_model(chosen[i]["arch"], out / "model.pt")
            rows[i]["mAP"][str(seed)] = scorer.score(model, chosen[i]["arch"].input_size)["mAP"]
            metrics = json.loads((out / "metrics.json").read_text())
            rows[i]["wall_time_s"][str(seed)] = metrics.get("wall_time_s")
            print(f"arch {i} seed {seed}: mAP {rows[i]['mAP'][str(seed)]:.4f}", flush=True)
            result["summary"] = summarise(rows, args.seeds)
            result["total_time_s"] = round(time.perf_counter() - started, 1)
            write_result(args.out, result)
    finally:  # a failed run (or Ctrl-C) stops the queue: runs not started are cancelled
        pool.shutdown(wait=True, cancel_futures=True)

    s = result["summary"]
    print(f"\n{'#':>2} {'level':>5} {'profile':<17} {'pred ms':>8} " + " ".join(f"{'s' + str(x):>7}" for x in args.seeds)
          + f" {'mean':>7} {'spread':>7}")
    for r in rows:
        print(f"{r['index']:>2} {r['level']!s:>5} {r['profile']:<17} {r['predicted_ms']:>8.3f} "
              + " ".join(f"{r['mAP'][str(x)]:>7.4f}" for x in args.seeds) + f" {r['mean']:>7.4f} {r['spread']:>7.4f}")
    if "gap_over_max_spread" in s:
        ratio = "n/a" if s["gap_over_max_spread"] is None else f"{s['gap_over_max_spread']:.1f}x"
        print(f"largest - smallest {s['largest_minus_smallest']:.4f} = {ratio} the largest "
              f"seed spread ({s['max_seed_spread']:.4f}); needed: >= 3x")
    print(f"seed-to-seed Kendall tau {s['seed_to_seed_kendall_tau']}; separable same-level pairs: "
          f"{len(s['separable_same_level_pairs'])}")


if __name__ == "__main__":
    main()
