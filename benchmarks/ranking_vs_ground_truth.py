"""Does the supernet rank the ground truth's architectures as training them alone does?

Reads a `benchmarks/ground_truth.py` result (architectures fixed before any supernet was trained,
each trained alone with several seeds and scored on a search split), trains one supernet per
sampling recipe and per training budget on the same training images (the same data, search
fraction and seed, so it holds out the same images), and scores every architecture inside it
with `nas evolve`'s scorer (`evolution.scoring.CandidateScorer`, on the same calibration and
held-out images). Reported per recipe and budget, and for the free proxies (params, FLOPs):

* Kendall's tau against the ground truth's mean mAP, and its share of the seed-to-seed tau;
* within-level pairwise accuracy: the share of same-level pairs whose ground-truth means differ
  by more than both seed spreads that the scorer orders the same way.

Supernets are real `nas train-supernet` runs kept under the run folder (an interrupted
benchmark resumes); the JSON is rewritten after every supernet. `--rejudge FILE...` trains and
scores nothing: it judges the supernet scores stored in earlier results of this benchmark against
the given ground truth (for a ground truth that gained seeds after the supernets were scored).

    python benchmarks/ranking_vs_ground_truth.py --ground-truth benchmarks/results/ground_truth.json \\
        --strategies uniform sandwich --epochs 10 20 40 --out benchmarks/results/ranking_vs_ground_truth.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from train_common import BENCH_ROOT, write_result

from evolution.data import prepare_subsets
from evolution.scoring import CandidateScorer
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.cli.quickstart_config import CONFIG_FILE
from picodet_nas.data import resolve_data
from picodet_nas.latency.metrics import kendall_tau
from picodet_nas.space import load_space
from picodet_nas.utils.io import atomic_write_json
from supernet.sampling import DEFAULT_CORRELATION, STRATEGIES as SAMPLING_STRATEGIES

STRATEGIES = (*SAMPLING_STRATEGIES, "sandwich-kd")  # every sampling rule, and the sandwich with distillation


def strategy_flags(strategy: str, distill: float, correlation: float = DEFAULT_CORRELATION) -> list[str]:
    if strategy == "sandwich-kd":
        return ["--strategy", "sandwich", "--distill", str(distill)]
    if strategy == "correlated":
        return ["--strategy", strategy, "--correlation", str(correlation)]
    return ["--strategy", strategy]


def pairwise_accuracy(scores: dict[int, float], pairs: list[list[int]], truth: dict[int, float]) -> float | None:
    """Share of `pairs` (i, j) that `scores` order as `truth` does (a tie counts as half)."""
    if not pairs:
        return None
    right = 0.0
    for i, j in pairs:
        s, t = scores[i] - scores[j], truth[i] - truth[j]
        right += 0.5 if s == 0 else float((s > 0) == (t > 0))
    return right / len(pairs)


def judge(scores: dict[int, float], truth: dict[int, float], pairs: list[list[int]], ceiling: float | None) -> dict:
    keys = sorted(truth)
    tau = kendall_tau([scores[k] for k in keys], [truth[k] for k in keys])
    tau = None if math.isnan(tau) else tau
    return {"kendall_tau": tau, "share_of_seed_tau": tau / ceiling if tau is not None and ceiling else None,
            "pairwise_accuracy": pairwise_accuracy(scores, pairs, truth)}


def cached_scores(path: Path, rows: list[dict], scorer: CandidateScorer) -> dict[int, dict]:
    """`scorer`'s result for every row's architecture, kept in `path` next to the supernet so that
    re-judging against a grown ground truth scores only the architectures not scored yet (an entry
    whose architecture changed is scored again)."""
    cache = json.loads(path.read_text()) if path.is_file() else {}
    scored = {}
    for r in rows:
        hit = cache.get(str(r["index"]))
        if hit is None or hit["arch"] != r["arch"]:
            hit = {"arch": r["arch"], "score": scorer.score(r["arch"])}
            cache[str(r["index"])] = hit
            atomic_write_json(path, cache)
        scored[r["index"]] = hit["score"]
    return scored


def partial_truth(gt: dict) -> tuple[list[dict], dict]:
    """The architectures of an unfinished ground truth that have at least one seed, each with its
    mean over those seeds, and the same-level pairs whose means differ by more than the largest seed
    spread measured so far (no spread measured yet: no pairs). No seed-to-seed tau unless the ground
    truth has one."""
    rows = []
    for r in gt["archs"]:
        if r["mAP"]:
            rows.append({**r, "mean": sum(r["mAP"].values()) / len(r["mAP"])})
    spreads = [max(r["mAP"].values()) - min(r["mAP"].values()) for r in rows if len(r["mAP"]) > 1]
    pairs = []
    if spreads:
        limit = max(spreads)
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                if a["level"] == b["level"] and a["level"] not in ("max", "min") and abs(a["mean"] - b["mean"]) > limit:
                    pairs.append([a["index"], b["index"]])
    summary = {"separable_same_level_pairs": pairs,
               "seed_to_seed_kendall_tau": gt["summary"].get("seed_to_seed_kendall_tau"),
               "partial": True, "archs_with_a_seed": len(rows),
               "seeds_per_arch": {str(r["index"]): sorted(r["mAP"]) for r in rows},
               "max_seed_spread_so_far": max(spreads) if spreads else None}
    return rows, summary


def proxies(rows: list[dict], num_classes: int = 80) -> dict[str, dict[int, float]]:
    """Params and FLOPs of every architecture, counted as the candidate scorer counts them (the
    number of classes moves both by the same small amount for every architecture)."""
    from picodet_nas.arch import Arch
    from picodet_nas.models import build_model
    from picodet_nas.summary import count_macs, count_params

    out = {"params": {}, "flops": {}}
    for r in rows:
        arch = Arch.from_dict(r["arch"])
        model = build_model(arch, num_classes).eval()
        out["params"][r["index"]] = count_params(model)
        out["flops"][r["index"]] = 2.0 * float(sum(count_macs(model, arch.input_size).values()))
    return out


def head_per_depth(entry: dict) -> str:
    """An entry's per-depth head parts (results written before the option was renamed say
    `head_outputs: per-depth` for "outputs")."""
    if "head_per_depth" in entry:
        return entry["head_per_depth"]
    return "outputs" if entry.get("head_outputs") == "per-depth" else "none"


def command_num_random(command: str) -> int:
    """`--num-random N` of a stored result's command (results written before entries recorded it);
    the benchmark's default, 2, when the command does not give it."""
    words = command.split()
    return int(words[words.index("--num-random") + 1]) if "--num-random" in words[:-1] else 2


def rejudge(paths: list[Path], result: dict, rows: list[dict], truth: dict[int, float], pairs: list[list[int]],
            ceiling: float | None) -> None:
    """Judge the supernet scores stored in earlier results (`paths`) against this ground truth."""
    judged = ("kendall_tau", "share_of_seed_tau", "pairwise_accuracy")
    result["rejudged_from"] = [str(p) for p in paths]
    result["proxies"] = {name: judge(values, truth, pairs, ceiling) for name, values in proxies(rows).items()}
    for path in paths:
        stored = json.loads(path.read_text())
        for entry in stored["supernets"]:
            entry.setdefault("num_random", command_num_random(stored.get("command", "")))
            scores = {int(k): v for k, v in entry["supernet_mAP"].items()}
            if set(truth) - set(scores):
                sys.exit(f"{path}: no supernet score of architectures {sorted(set(truth) - set(scores))}")
            result["supernets"].append({**{k: v for k, v in entry.items() if k not in (*judged, "head_outputs")},
                                        "head_per_depth": head_per_depth(entry),
                                        **judge(scores, truth, pairs, ceiling)})
    groups: dict[str, list[float]] = {}
    for entry in result["supernets"]:
        entry.setdefault("seed", 0)  # results written before supernet seeds were recorded: the data seed, 0
        randoms = {"uniform": "", "correlated": f" c{entry.get('correlation', DEFAULT_CORRELATION):g}"}.get(
            entry["strategy"], f" r{entry['num_random']}")  # uniform has neither
        recipe = (f"{entry['strategy']}{randoms} distill {entry.get('distill', 0):g} "
                  f"head-per-depth {entry['head_per_depth']} e{entry['epochs']}")
        groups.setdefault(recipe, []).append(entry["kendall_tau"])
        print(f"{recipe} seed {entry['seed']}: tau {entry['kendall_tau']:.3f} ({entry['share_of_seed_tau']:.2f} of the "
              f"seed-to-seed {ceiling:.3f}), pairwise {entry['pairwise_accuracy']} over {len(pairs)} pairs")
    result["recipes"] = {recipe: {"supernet_seeds": len(taus), "mean_tau": round(statistics.mean(taus), 4),
                                  "min_tau": round(min(taus), 4), "max_tau": round(max(taus), 4),
                                  "mean_share_of_seed_tau": round(statistics.mean(taus) / ceiling, 4)}
                         for recipe, taus in groups.items()}
    for recipe, g in result["recipes"].items():
        print(f"{recipe}: mean tau {g['mean_tau']:.3f} over {g['supernet_seeds']} supernet seed(s) "
              f"({g['min_tau']:.3f} to {g['max_tau']:.3f})")
    for name, v in result["proxies"].items():
        print(f"{name}: tau {v['kendall_tau']:.3f}, pairwise {v['pairwise_accuracy']}")


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ground-truth", type=Path, required=True, help="a benchmarks/ground_truth.py result JSON")
    ap.add_argument("--strategies", nargs="+", default=["uniform", "sandwich"], choices=STRATEGIES)
    ap.add_argument("--distill", type=float, default=0.5, help="distillation weight of sandwich-kd")
    ap.add_argument("--epochs", type=int, nargs="+", default=[qs["supernet"]["epochs"]],
                    help="supernet training budgets (epochs of the supernet's training images)")
    ap.add_argument("--num-random", type=int, default=qs["supernet"].get("num_random", 2))
    ap.add_argument("--correlation", type=float, default=DEFAULT_CORRELATION,
                    help="gene correlation of the correlated rule (nas train-supernet --correlation)")
    ap.add_argument("--supernet-seeds", type=int, nargs="+",
                    help="training seeds of the supernets (default: the ground truth's data seed); every one "
                         "holds out the ground truth's search split")
    ap.add_argument("--head-per-depth", choices=("none", "outputs", "all"), default="none",
                    help="the supernets' per-depth head parts (nas train-supernet --head-per-depth)")
    ap.add_argument("--lr", type=float, help="default: the ground truth's")
    ap.add_argument("--warmup-iters", type=int, help="default: the ground truth's")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--partial", action="store_true",
                    help="judge against an unfinished ground truth: every architecture with at least one seed, "
                         "its mean over the seeds it has; separable pairs use the largest seed spread measured so "
                         "far; the result says it is partial")
    ap.add_argument("--score-only", action="store_true", help="score the supernets already trained; train none")
    ap.add_argument("--rejudge", type=Path, nargs="+", metavar="RESULT",
                    help="judge the supernet scores stored in these results of this benchmark; train and score none")
    ap.add_argument("--out")
    args = ap.parse_args()

    started = time.perf_counter()
    gt = json.loads(args.ground_truth.read_text())
    rows = [r for r in gt["archs"] if "mean" in r]
    if args.partial:
        rows, summary = partial_truth(gt)
    elif len(rows) < len(gt["archs"]):
        sys.exit(f"{args.ground_truth}: {len(gt['archs']) - len(rows)} architectures lack a complete ground truth "
                 f"(--partial judges against the seeds there are)")
    else:
        summary = gt["summary"]
    truth = {r["index"]: r["mean"] for r in rows}
    lr = args.lr if args.lr is not None else float(gt["recipe"]["lr"])
    warmup = args.warmup_iters if args.warmup_iters is not None else int(gt["recipe"]["warmup_iters"])
    pairs, ceiling = summary["separable_same_level_pairs"], summary["seed_to_seed_kendall_tau"]
    if args.rejudge:
        result = {"benchmark": "ranking_vs_ground_truth", "command": " ".join(sys.argv),
                  "ground_truth": str(args.ground_truth), "space": gt["space"], "seed_to_seed_kendall_tau": ceiling,
                  "separable_pairs": len(pairs), "supernets": [], "proxies": {},
                  **({"partial_ground_truth": summary} if args.partial else {})}
        rejudge(args.rejudge, result, rows, truth, pairs, ceiling)
        write_result(args.out, result)
        return
    # the supernet's seed is the ground truth's split seed: it then holds out the same images
    data, seed, batch = Path(gt["data"]), int(gt["data_seed"]), int(gt["recipe"]["batch_size"])
    grad_clip = float(gt["recipe"].get("grad_clip", 0.0))  # the supernet trains with the same recipe
    space = load_space(gt["space"])
    run_dir = args.run_dir or BENCH_ROOT / f"ranking-vs-gt-{Path(gt['run_dir']).name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = resolve_data(data)
    nas = [sys.executable, "-m", "picodet_nas.cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    result = {"benchmark": "ranking_vs_ground_truth", "command": " ".join(sys.argv),
              "ground_truth": str(args.ground_truth), "space": gt["space"], "data": str(data),
              "seed_to_seed_kendall_tau": ceiling, "separable_pairs": len(pairs), "supernets": [], "proxies": {},
              **({"partial_ground_truth": summary} if args.partial else {}),
              "run_dir": str(run_dir)}
    subsets = None
    runs = [(epochs, strategy, sn_seed) for epochs in args.epochs for strategy in args.strategies
            for sn_seed in (args.supernet_seeds or [seed])]
    for epochs, strategy, sn_seed in runs:
        tag = {"sandwich-kd": f"{strategy}{args.distill:g}",
               "correlated": f"{strategy}{args.correlation:g}"}.get(strategy, strategy)
        tag += {"none": "", "outputs": "-per-depth-outputs", "all": "-per-depth-head"}[args.head_per_depth]
        tag += f"-seed{sn_seed}" if sn_seed != seed else ""
        out = run_dir / f"supernet-{tag}-r{args.num_random}-e{epochs}"
        done = (out / "supernet.pt").is_file() and (out / "metrics.csv").is_file() and \
            sum(1 for _ in (out / "metrics.csv").open()) - 1 >= epochs
        if not done and args.score_only:
            print(f"{out}: not trained; skipped (--score-only)", flush=True)
            continue
        if not done:
            cmd = nas + ["train-supernet", "--space", gt["space"], "--data", str(data), "--epochs", str(epochs),
                         "--batch-size", str(batch), "--lr", str(lr), "--grad-clip", str(grad_clip), "--warmup-iters",
                         str(warmup), "--eval-interval", str(epochs), "--workers", "0",
                         "--seed", str(sn_seed), "--split-seed", str(seed),
                         "--calib-images", str(gt["calib_images"]),
                         "--search-fraction", str(gt["search_fraction"]), "--num-random", str(args.num_random),
                         "--head-per-depth", args.head_per_depth,
                         *strategy_flags(strategy, args.distill, args.correlation), "--out", str(out)] + \
                (["--resume"] if (out / "last.pt").is_file() else [])
            print("$ " + " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            if subprocess.run(cmd, env=env).returncode != 0:
                sys.exit(f"nas train-supernet failed ({strategy}, {epochs} epochs)")
            print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
        state, meta = load_model_weights(out / "supernet.pt")
        held = meta["search_split"]["held_out_ids"]
        if subsets is None:
            subsets = prepare_subsets(paths, run_dir / "scoring", calib_images=gt["calib_images"],
                                      val_images=None, seed=seed, batch_size=16, held_out_ids=held)
            if subsets.val_images != gt["scored_images"]:
                sys.exit(f"{out}: holds out {subsets.val_images} images, the ground truth was scored on "
                         f"{gt['scored_images']}")
        scorer = CandidateScorer(space.to_dict(), int(meta["num_classes"]), state, subsets.data,
                                 threads=args.threads)
        scored = cached_scores(out / f"scores-calib{gt['calib_images']}-seed{seed}.json", rows, scorer)
        if not result["proxies"]:
            for proxy in ("params", "flops"):
                result["proxies"][proxy] = judge({k: v[proxy] for k, v in scored.items()}, truth, pairs, ceiling)
        entry = {"strategy": strategy, "num_random": args.num_random, "epochs": epochs, "seed": sn_seed,
                 "distill": args.distill if strategy == "sandwich-kd" else 0.0,
                 **({"correlation": args.correlation} if strategy == "correlated" else {}),
                 "head_per_depth": args.head_per_depth,
                 "supernet_mAP": {str(k): v["map"] for k, v in scored.items()},
                 **judge({k: v["map"] for k, v in scored.items()}, truth, pairs, ceiling)}
        result["supernets"].append(entry)
        result["total_time_s"] = round(time.perf_counter() - started, 1)
        write_result(args.out, result)
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{tag} e{epochs}: tau {fmt(entry['kendall_tau'])} ({fmt(entry['share_of_seed_tau'])} of the "
              f"seed-to-seed {fmt(ceiling)}), pairwise accuracy {fmt(entry['pairwise_accuracy'])} over "
              f"{len(pairs)} pairs", flush=True)
    for proxy, v in result["proxies"].items():
        print(f"{proxy}: tau {v['kendall_tau']}, pairwise accuracy {v['pairwise_accuracy']}")


if __name__ == "__main__":
    main()
