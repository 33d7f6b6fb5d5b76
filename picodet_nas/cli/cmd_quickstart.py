"""nas quickstart [--out DIR] [--name NAME] [--budget-ms X] [--seed N] [--config FILE]"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline on a generated dataset, on the CPU, in minutes",
        description="Run every stage of the system with small settings: generate a shapes dataset, train the "
        "quickstart space's supernet, profile this machine with ONNX Runtime, choose a latency budget between the "
        "fastest and the slowest subnet (printed), search under it, retrain the winner from its inherited weights, "
        "export it, time it and evaluate it. Each stage writes into its own subfolder of the run folder "
        "(runs/quickstart/<name>/), and report.md there shows the supernet's training curves, predicted vs "
        "measured latency, the Pareto front and the final model's numbers, with how long each stage took. "
        "The small settings come from one file (picodet_nas/configs/quickstart.yaml); the commands' own "
        "defaults stay the published real-scale ones.",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/quickstart/<name>); never overwritten")
    p.add_argument("--name", help="run name under runs/quickstart (default: quickstart-<date>-<time>)")
    p.add_argument("--budget-ms", metavar="X",
                   help="latency budget for the search, e.g. 2.5 or '2.5ms' (default: chosen from the measured "
                        "table, 40%% of the way from the fastest to the slowest predicted subnet)")
    p.add_argument("--seed", type=int, help="seed of every stage (default: the config file's, 0)")
    p.add_argument("--config", metavar="FILE",
                   help="a YAML file merged over the shipped picodet_nas/configs/quickstart.yaml (same sections: "
                        "dataset, supernet, profile, budget, evolve, retrain; only the keys you change)")
    p.add_argument("--compare", action="store_true",
                   help="also retrain the uniform-width reference of similar predicted latency (within 15%%) that the "
                        "supernet scored highest, alike, and put both retrained mAPs side by side in report.md")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from evolution.budget import parse_budget

    from ..errors import UserError
    from ..utils.rundir import default_run_name, prepare_run_dir
    from .quickstart_pipeline import load_config, run_quickstart

    cfg = load_config(args.config)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    budget_ms = None
    if args.budget_ms is not None:
        try:
            budget_ms = parse_budget(args.budget_ms)
        except UserError as e:  # its message names nas evolve's flag
            raise UserError(str(e).replace("--latency-budget", "--budget-ms", 1)) from None
    run = prepare_run_dir("quickstart", out=args.out, name=args.name, default_name=default_run_name("quickstart"))
    summary = run_quickstart(cfg, run.path, budget_ms=budget_ms, compare=args.compare)
    final = summary["retrain"]
    print(f"{run.path / 'report.md'}: mAP {final['coco']['mAP']:.4f}, {final['measured_latency_ms']:.3f} ms measured "
          f"for a {summary['budget']['ms']:g} ms budget, {summary['total_seconds']:.0f} s in all"
          + (f"; {summary['compare']['label']} retrained alike: mAP {summary['compare']['coco']['mAP']:.4f}"
             if "compare" in summary else ""))
    return 0
