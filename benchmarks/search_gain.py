"""Does the search beat the networks a person would pick by hand at the same latency?

`nas evolve` searches a supernet under a budget (default: half-way along the table's latency
range). The winner and every hand-designed network of the space (each uniform channel ratio
at each input size, and the presets of the space's backbone scale) are then timed together on
this machine, in interleaved rounds, exactly as the table was measured (the fastest round
counts); the references are the hand-designed networks whose *measured* latency is within
`--tolerance` (3%) of the winner's
(the nearest alone, flagged, when none is). The winner and the references are retrained alike
from scratch (same epochs, batch, LR) with every `--train-seeds` seed, on the data's training
split, and scored on its validation split, which the search never saw (it scores candidates on
the supernet's search split, held out of the training images). After training they are timed
together once more.

The verdict: the searched network's mean mAP over the seeds exceeds the best reference's by
more than the larger of the two seed spreads (max - min). Runs are kept under the run folder
and reused, and the JSON is rewritten after every run, so an interrupted benchmark resumes.
`--jobs N` trains N runs at once, each with `--threads / N` threads (each run is deterministic
for its seed, so the mAPs do not depend on it).

Defaults are the quick start's settings (space, data, supernet, evolve and retrain sections of
`picodet_nas/configs/quickstart.yaml`); the flags run it at another scale, e.g. on the ground
truth's data with a ranking benchmark's supernet:

    python benchmarks/search_gain.py --out runs/bench/search_gain.json
    python benchmarks/search_gain.py --data runs/bench/shapes-1500-200-320-s0 \
        --supernet runs/bench/.../supernet.pt --calib-images 512 --val-images all --grad-clip 5 \
        --jobs 2 --out benchmarks/results/search_gain.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from supernet_ranking import DEFAULT_TABLE, evolve_command, quickstart_supernet, run
from train_common import BENCH_ROOT, add_bn_freeze_flags, ensure_shapes, write_result

from picodet_nas.arch import PRESETS, Arch, load_arch_file, save_arch
from picodet_nas.cli.quickstart_config import CONFIG_FILE
from picodet_nas.cli.quickstart_pipeline import choose_budget
from picodet_nas.latency import load_table, measure_latency, table_timing
from picodet_nas.latency.predictor import LatencyPredictor


def reference_pool(space, input_sizes) -> dict[str, Arch]:
    """Every hand-designed network of the space: each uniform channel ratio at each input size
    (kernels, neck and head as the space's base), and the presets of the space's backbone scale
    at each input size where they are members of the space."""
    pool: dict[str, Arch] = {}
    families = [(f"uniform-{r:g}", space.uniform(r)) for r in space.choices.get("channel_ratio", ())]
    families += [(name, preset) for name, preset in PRESETS.items() if preset.scale == space.base.scale]
    for name, base in families:
        for size in input_sizes:
            arch = base.replace(input_size=size)
            if space.contains(arch):
                pool[f"{name}@{size}"] = arch
    return pool


def interleaved_latency(nets: dict[str, Arch], rounds: int, num_classes: int, timing: dict) -> dict[str, dict]:
    """Each network timed `rounds` times, round-robin (a shared machine's speed drifts; one
    network timed in a slow minute would look slower than it is). Each round's figure is the
    table's statistic; `measured_ms` is the fastest round (interference only ever adds time: on
    this shared VM the medians of 7 rounds spread the measured/predicted ratio of 10 networks over
    0.66-0.84 in a noisy minute, the minima over 0.64-0.68), `median_ms` the median round."""
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(rounds):
        for name, arch in nets.items():
            times[name].append(measure_latency(arch, num_classes=num_classes, **timing)["latency_ms"])
    return {name: {"measured_ms": round(min(t), 4), "median_ms": round(statistics.median(t), 4),
                   "rounds_ms": [round(x, 4) for x in t]} for name, t in times.items()}


def close_references(pool_ms: dict[str, float], winner_ms: float, tolerance: float) -> tuple[list[str], bool]:
    """The hand-designed networks whose measured latency is within `tolerance` (relative) of the
    winner's; when none is, the nearest alone, and False (no like-for-like comparison exists)."""
    gap = {name: abs(ms - winner_ms) / winner_ms for name, ms in pool_ms.items()}
    close = sorted((n for n, g in gap.items() if g <= tolerance), key=gap.get)
    if close:
        return close, True
    return [min(gap, key=gap.get)], False


def verdict(rows: list[dict]) -> dict:
    """Whether the searched network's mean mAP beats the best reference's mean by more than the
    larger of the two networks' seed spreads (max - min over seeds)."""
    done = [r for r in rows if r["mAP_per_seed"] and len(r["mAP_per_seed"]) == r["seeds"]]
    searched = next((r for r in done if r["name"] == "searched"), None)
    refs = [r for r in done if r["name"] != "searched"]
    if searched is None or not refs:
        return {"complete": False}
    best = max(refs, key=lambda r: r["mean"])
    margin = max(searched["spread"], best["spread"])
    gain = searched["mean"] - best["mean"]
    return {"complete": len(done) == len(rows), "best_reference": best["name"], "gain": round(gain, 4),
            "larger_seed_spread": round(margin, 4), "beats_reference": gain > margin}


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ev_qs = qs["evolve"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a shapes dataset (default: generated as the quick start's)")
    ap.add_argument("--space", default=qs["space"])
    ap.add_argument("--latency-table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--strategy", default=None, choices=["uniform", "sandwich"],
                    help="which of the ranking benchmark's supernets to use when --supernet is not given "
                         "(default: the quick start's)")
    ap.add_argument("--supernet", type=Path, help="supernet.pt of the space (default: the ranking benchmark's "
                    "supernet of --strategy)")
    ap.add_argument("--fraction", type=float, default=0.5, help="budget along the table's latency range")
    ap.add_argument("--budget-ms", type=float, help="the latency budget in ms (overrides --fraction), e.g. the "
                    "predicted latency of a preset, to ask whether the search beats it at its own speed")
    ap.add_argument("--tolerance", type=float, default=0.03,
                    help="references: hand-designed networks within this relative measured latency of the "
                         "winner's (default: 0.03)")
    for key in ("population", "generations", "calib_images"):
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=ev_qs[key],
                        help=f"nas evolve's (default: the quick start's, {ev_qs[key]})")
    ap.add_argument("--val-images", default=str(ev_qs["val_images"]),
                    help=f"nas evolve's search-split images, or 'all' (default: the quick start's, {ev_qs['val_images']})")
    ap.add_argument("--epochs", type=int, default=qs["retrain"]["epochs"])
    ap.add_argument("--batch-size", type=int, default=qs["retrain"]["batch_size"])
    ap.add_argument("--lr", type=float, default=qs["retrain"]["lr"])
    ap.add_argument("--warmup-iters", type=int, default=qs["retrain"]["warmup_iters"])
    add_bn_freeze_flags(ap)
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1], help="retraining seeds (default: 0 1)")
    ap.add_argument("--latency-rounds", type=int, default=5,
                    help="interleaved timing rounds over all networks; the median counts (default: 5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--jobs", type=int, default=1, help="retraining runs at once (default: 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data, supernet and search (default: 0)")
    ap.add_argument("--run-dir", type=Path, help="where the runs go (default: runs/bench/search-gain-<space>-s<seed>)")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    ds = qs["dataset"]
    ev = {**ev_qs, "population": args.population, "generations": args.generations,
          "calib_images": args.calib_images, "val_images": args.val_images}
    data = args.data or ensure_shapes(ds["train"], ds["val"], ds["image_size"], args.seed)
    run_dir = args.run_dir or BENCH_ROOT / f"search-gain-{args.space}-s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    supernet = args.supernet or quickstart_supernet(qs, args.space, args.seed,
                                                    args.strategy or qs["supernet"]["strategy"])
    if not supernet.is_file():
        sys.exit(f"no supernet at {supernet}: pass --supernet, or run benchmarks/supernet_ranking.py first")
    nas = [sys.executable, "-m", "picodet_nas.cli.main"]
    table = load_table(args.latency_table)
    predictor = LatencyPredictor(table, str(args.latency_table))
    budget = args.budget_ms if args.budget_ms is not None else choose_budget(predictor.range_ms(), args.fraction)

    evolve_dir = run_dir / "evolve"  # best.yaml is rewritten every generation: a killed search resumes, a
    # finished one replays its recorded scores
    run(evolve_command(nas, supernet, args.latency_table, budget, data, ev, args.seed, evolve_dir)
        + (["--resume"] if (evolve_dir / "config.yaml").is_file() else []), args.threads)
    winner, _ = load_arch_file(evolve_dir / "best.yaml")

    # the references, chosen by measured latency before anything is retrained (kept on resume)
    timing = table_timing(table)
    chosen_file = run_dir / "references.json"
    if chosen_file.is_file():
        chosen = json.loads(chosen_file.read_text())
    else:
        pool = {n: a for n, a in reference_pool(predictor.space, predictor.input_sizes).items() if a != winner}
        timed = interleaved_latency({"searched": winner, **pool}, args.latency_rounds, predictor.num_classes, timing)
        names, within = close_references({n: timed[n]["measured_ms"] for n in pool},
                                         timed["searched"]["measured_ms"], args.tolerance)
        chosen = {"tolerance": args.tolerance, "within_tolerance": within, "references": names,
                  "timed": {n: {**t, "predicted_ms": round(predictor.predict(a), 4)}
                            for (n, a), t in zip({"searched": winner, **pool}.items(), timed.values())}}
        chosen_file.write_text(json.dumps(chosen, indent=1))
    pool = reference_pool(predictor.space, predictor.input_sizes)
    nets = {"searched": winner, **{n: pool[n] for n in chosen["references"]}}
    print(f"winner measured {chosen['timed']['searched']['measured_ms']:.3f} ms; references within "
          f"{args.tolerance:.0%}: {', '.join(chosen['references'])}"
          + ("" if chosen["within_tolerance"] else " (none within: the nearest)"), flush=True)

    rows = [{"name": name, "arch": arch.to_dict(), "predicted_ms": round(predictor.predict(arch), 4),
             "seeds": len(args.train_seeds), "mAP_per_seed": {}, "mAP50_per_seed": {}} for name, arch in nets.items()]
    result = {"benchmark": "search_gain", "command": " ".join(sys.argv), "space": args.space,
              "latency_table": str(args.latency_table), "supernet": str(supernet), "budget_ms": round(budget, 4),
              "data": str(data), "evolve": {k: ev[k] for k in ("population", "parents", "mutations", "crossovers",
                                                                "generations", "calib_images", "val_images")},
              "recipe": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "warmup_iters",
                                                       "bn_freeze_epochs", "grad_clip")},
              "train_seeds": args.train_seeds, "selection": chosen, "rows": rows}
    jobs = max(1, min(args.jobs, args.threads))
    threads = max(1, args.threads // jobs)

    def train(name: str, seed: int) -> Path:
        out = run_dir / f"retrain-{name}-s{seed}"
        if not (out / "metrics.json").is_file():
            save_arch(nets[name], run_dir / f"{name}.yaml")
            run(nas + ["retrain", str(run_dir / f"{name}.yaml"), "--data", str(data), "--epochs", str(args.epochs),
                       "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-iters",
                       str(args.warmup_iters), "--bn-freeze-epochs", str(args.bn_freeze_epochs), "--grad-clip",
                       str(args.grad_clip), "--eval-interval", str(args.epochs), "--workers", "0", "--seed",
                       str(seed), "--device", "cpu", "--no-measure-latency", "--out", str(out)]
                + (["--resume"] if (out / "last.pt").is_file() else []), threads)
        return out

    order = [(name, seed) for seed in args.train_seeds for name in nets]
    with ThreadPoolExecutor(jobs) as ex:
        futures = [((name, seed), ex.submit(train, name, seed)) for name, seed in order]
        for (name, seed), future in futures:
            m = json.loads((future.result() / "metrics.json").read_text())
            row = next(r for r in rows if r["name"] == name)
            row["mAP_per_seed"][str(seed)] = m["coco"]["mAP"]
            row["mAP50_per_seed"][str(seed)] = m["coco"]["mAP50"]
            row["params"], row["flops"] = m["params"], m["flops"]
            maps = list(row["mAP_per_seed"].values())
            row["mean"], row["spread"] = round(statistics.mean(maps), 4), round(max(maps) - min(maps), 4)
            print(f"{name} seed {seed}: mAP {m['coco']['mAP']:.4f}", flush=True)
            result["verdict"] = verdict(rows)
            result["total_time_s"] = round(time.perf_counter() - started, 1)
            write_result(args.out, result)

    # timed together once more, now that training no longer shares the machine
    final = interleaved_latency(nets, args.latency_rounds, predictor.num_classes, timing)
    for r in rows:
        r.update(final[r["name"]])
    result["verdict"] = verdict(rows)
    result["total_time_s"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)

    where = ("given" if args.budget_ms is not None
             else f"{args.fraction:g} of the way from {predictor.fastest_ms:.3f} ms to the slowest")
    print(f"\nbudget {budget:.3f} ms ({where})")
    print(f"{'network':>16} " + " ".join(f"{'s' + str(s):>7}" for s in args.train_seeds)
          + f" {'mean':>7} {'spread':>7} {'pred ms':>8} {'meas ms':>8} {'params':>8}")
    for r in rows:
        print(f"{r['name']:>16} " + " ".join(f"{r['mAP_per_seed'][str(s)]:>7.4f}" for s in args.train_seeds)
              + f" {r['mean']:>7.4f} {r['spread']:>7.4f} {r['predicted_ms']:>8.3f} {r['measured_ms']:>8.3f} "
              f"{r['params'] / 1e6:>7.3f}M")
    v = result["verdict"]
    print(f"searched - best reference ({v['best_reference']}) = {v['gain']:+.4f}; larger seed spread "
          f"{v['larger_seed_spread']:.4f}: {'beats it' if v['beats_reference'] else 'does not beat it'}")


if __name__ == "__main__":
    main()
