"""Does the search beat the networks a person would pick by hand at the same latency?

`nas evolve` searches the supernet under a budget (default: half-way along the table's
latency range); the winner and the hand-designed references of about the same latency are then
retrained alike from scratch (same epochs, batch, LR, seed) and timed exactly as the table was
measured. References:

* the space's uniform-width networks (every block at one channel ratio), one per ratio, each at
  the input size of the space whose predicted latency is nearest the winner's;
* the presets whose backbone scale is the space's (picodet-s for `esnet_s` and
  `picodet_s_joint`), at the input size (multiple of 32) whose predicted latency is nearest the
  winner's, when the preset is a member of the space at that size;

and of these only the ones within `--tolerance` (15%) of the winner's predicted latency (the
nearest one alone when none is that close): a network twice as slow is no reference.

Defaults are the quick start's settings (space, data, supernet, evolve and retrain sections of
`picodet_nas/configs/quickstart.yaml`); `--space`, `--latency-table`, `--supernet`, `--data` and
the training flags run it on another space. Finished stages found in the run folder are reused
(and the evolve stage of `benchmarks/budget_honesty.py` for the same budget).

    python benchmarks/search_gain.py --out runs/bench/search_gain.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml
from supernet_ranking import DEFAULT_TABLE, evolve_command, quickstart_supernet, run
from train_common import BENCH_ROOT, add_bn_freeze_flags, ensure_shapes, write_result

from picodet_nas.arch import PRESETS, Arch, load_arch_file, save_arch
from picodet_nas.cli.quickstart_config import CONFIG_FILE
from picodet_nas.cli.quickstart_pipeline import choose_budget
from picodet_nas.latency import load_table, measure_latency, table_timing
from picodet_nas.latency.predictor import LatencyPredictor


def references(predictor: LatencyPredictor, winner: Arch, tolerance: float = 0.15) -> dict[str, Arch]:
    """Hand-designed networks of about the winner's predicted latency (see the module doc): of
    each family, the input size nearest the winner's latency; a family whose nearest member is
    more than `tolerance` (relative) away is left out, unless no family comes that close, in
    which case the single nearest network is kept."""
    space, target = predictor.space, predictor.predict(winner)
    nearest: dict[str, Arch] = {}
    families = [(f"uniform-{r:g}", space.uniform(r)) for r in space.choices.get("channel_ratio", ())]
    families += [(name, preset) for name, preset in PRESETS.items() if preset.scale == space.base.scale]
    for name, base in families:
        options = [base.replace(input_size=s) for s in predictor.input_sizes]
        options = [a for a in options if space.contains(a)]
        if options:
            nearest[name] = min(options, key=lambda a: abs(predictor.predict(a) - target))

    def gap(arch: Arch) -> float:
        return abs(predictor.predict(arch) - target) / target

    close = {name: arch for name, arch in nearest.items() if gap(arch) <= tolerance}
    if not close and nearest:
        name = min(nearest, key=lambda n: gap(nearest[n]))
        close = {name: nearest[name]}
    return close


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a shapes dataset (default: generated as the quick start's)")
    ap.add_argument("--space", default=qs["space"])
    ap.add_argument("--latency-table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--strategy", default=None, choices=["uniform", "sandwich"],
                    help="which of the ranking benchmark's supernets to use when --supernet is not given "
                         "(default: the quick start's)")
    ap.add_argument("--supernet", type=Path, help="supernet.pt of the space (default: the ranking benchmark's "
                    "uniform supernet)")
    ap.add_argument("--fraction", type=float, default=0.5, help="budget along the table's latency range")
    ap.add_argument("--budget-ms", type=float, help="the latency budget in ms (overrides --fraction), e.g. the "
                    "predicted latency of a preset, to ask whether the search beats it at its own speed")
    ap.add_argument("--tolerance", type=float, default=0.15,
                    help="keep the hand-designed references within this relative latency of the winner's "
                         "(default: 0.15)")
    ap.add_argument("--epochs", type=int, default=qs["retrain"]["epochs"])
    ap.add_argument("--batch-size", type=int, default=qs["retrain"]["batch_size"])
    ap.add_argument("--lr", type=float, default=qs["retrain"]["lr"])
    ap.add_argument("--warmup-iters", type=int, default=qs["retrain"]["warmup_iters"])
    add_bn_freeze_flags(ap)
    ap.add_argument("--latency-rounds", type=int, default=3,
                    help="interleaved timing rounds over all networks; the median counts (default: 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, help="where the runs go (default: runs/bench/search-gain-<space>-s<seed>)")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    ds, ev = qs["dataset"], qs["evolve"]
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

    evolve_dir = run_dir / "evolve"
    shared = BENCH_ROOT / f"budget-honesty-s{args.seed}" / f"evolve-{args.fraction:g}"
    reuse = args.supernet is None and args.budget_ms is None and args.space == qs["space"]
    if reuse and (shared / "best.yaml").is_file():
        evolve_dir = shared  # the same search (same supernet, table, budget, settings and seed)
    elif not (evolve_dir / "best.yaml").is_file():
        run(evolve_command(nas, supernet, args.latency_table, budget, data, ev, args.seed, evolve_dir), args.threads)
    winner, _ = load_arch_file(evolve_dir / "best.yaml")
    nets = {"searched": winner, **references(predictor, winner, args.tolerance)}

    rows = []
    for name, arch in nets.items():
        out = run_dir / f"retrain-{name}"
        if not (out / "metrics.json").is_file():
            save_arch(arch, run_dir / f"{name}.yaml")
            run(nas + ["retrain", str(run_dir / f"{name}.yaml"), "--data", str(data), "--epochs", str(args.epochs),
                       "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-iters",
                       str(args.warmup_iters), "--bn-freeze-epochs", str(args.bn_freeze_epochs), "--grad-clip",
                       str(args.grad_clip), "--eval-interval", str(args.epochs), "--workers", "0", "--seed",
                       str(args.seed), "--device", "cpu", "--no-measure-latency", "--out", str(out)], args.threads)
        m = json.loads((out / "metrics.json").read_text())
        rows.append({"name": name, "arch": arch.to_dict(), "mAP": m["coco"]["mAP"], "mAP50": m["coco"]["mAP50"],
                     "params": m["params"], "flops": m["flops"], "predicted_ms": round(predictor.predict(arch), 4)})

    # Timed together, in interleaved rounds, once training is over: a shared machine's speed
    # drifts, and one network timed during a slow minute would look slower than it is.
    timing = table_timing(table)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(args.latency_rounds):
        for name, arch in nets.items():
            times[name].append(measure_latency(arch, num_classes=predictor.num_classes, **timing)["latency_ms"])
    for r in rows:
        r["measured_ms"] = round(statistics.median(times[r["name"]]), 4)
        r["measured_rounds_ms"] = [round(t, 4) for t in times[r["name"]]]

    where = ("given" if args.budget_ms is not None
             else f"{args.fraction:g} of the way from {predictor.fastest_ms:.3f} ms to the slowest")
    print(f"\nbudget {budget:.3f} ms ({where})")
    print(f"{'network':>14} {'mAP':>7} {'mAP50':>7} {'pred ms':>8} {'meas ms':>8} {'params':>8}")
    for r in rows:
        print(f"{r['name']:>14} {r['mAP']:>7.4f} {r['mAP50']:>7.4f} {r['predicted_ms']:>8.3f} {r['measured_ms']:>8.3f} "
              f"{r['params'] / 1e6:>7.3f}M")
    write_result(args.out, {"benchmark": "search_gain", "space": args.space, "latency_table": str(args.latency_table),
                            "supernet": str(supernet), "budget_ms": budget, "data": str(data), "epochs": args.epochs,
                            "batch_size": args.batch_size, "lr": args.lr, "bn_freeze_epochs": args.bn_freeze_epochs,
                            "grad_clip": args.grad_clip, "seed": args.seed, "rows": rows,
                            "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
