"""nas quickstart [--out DIR] [--name NAME] [--budget-ms X] [--seed N] [--config FILE] [--print-config]"""

from __future__ import annotations

import argparse

from .config import add_config_flags


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


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
        "The small settings come from one experiment file (picodet_nas/configs/quickstart.yaml); the commands' "
        "own defaults stay the published real-scale ones.",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/quickstart/<name>); never overwritten")
    p.add_argument("--name", help="run name under runs/quickstart (default: quickstart-<date>-<time>)")
    p.add_argument("--budget-ms", metavar="X",
                   help="latency budget for the search, e.g. 2.5 or '2.5ms' (default: the config file's budget: ms; "
                        "none there: chosen from the measured table, --budget-fraction of the way from the fastest "
                        "to the slowest predicted subnet)")
    p.add_argument("--budget-fraction", type=_fraction, default=0.4, metavar="F",
                   help="where the chosen budget lies between the fastest (0) and the slowest (1) predicted subnet "
                        "(default: the config file's, 0.4)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (default: the config file's, 0)")
    p.add_argument("--space", default="quickstart",
                   help="search space (default: the config file's, quickstart; the shipped settings are sized for it)")
    p.add_argument("--threads", type=int, metavar="T",
                   help="PyTorch intra-op threads while training and scoring (default: the config file's; none "
                        "there: PyTorch's default)")
    p.add_argument("--compare", action="store_true",
                   help="also retrain the uniform-width reference of similar predicted latency (within 15%%) that the "
                        "supernet scored highest, alike, and put both retrained mAPs side by side in report.md")
    add_config_flags(p, "budget", shared=("seed", "space", "threads"), exclude=("out", "name", "compare"),
                     rename={"budget_ms": "ms", "budget_fraction": "fraction"},
                     help="an experiment file merged over the shipped picodet_nas/configs/quickstart.yaml, section by "
                          "section (shared keys seed, space, threads; sections dataset, supernet, profile, budget, "
                          "evolve, retrain, each taking its command's options; give only the keys you change). Flags "
                          "given on the command line override both files")
    p.set_defaults(handler=run, config_text=config_text)


def _flags(args: argparse.Namespace) -> dict:
    """The flags given, in the experiment-file shape (`budget_ms` is `budget: ms`)."""
    from .quickstart_config import parse_ms

    ms = parse_ms(args.budget_ms, "--budget-ms") if args.budget_ms is not None else None
    return {"seed": args.seed, "space": args.space, "threads": args.threads,
            "budget": {"ms": ms, "fraction": args.budget_fraction}}


def config_text(args: argparse.Namespace) -> str:
    """`--print-config`: the shipped file, --config and the flags, resolved."""
    from .config import dump
    from .quickstart_config import load_config

    return dump(load_config(args.config, _flags(args)).document())


def run(args: argparse.Namespace) -> int:
    from ..utils.rundir import default_run_name, prepare_run_dir
    from .quickstart_config import load_config
    from .quickstart_pipeline import run_quickstart

    cfg = load_config(args.config, _flags(args))
    run = prepare_run_dir("quickstart", out=args.out, name=args.name, default_name=default_run_name("quickstart"))
    summary = run_quickstart(cfg, run.path, compare=args.compare)
    final = summary["retrain"]
    print(f"{run.path / 'report.md'}: mAP {final['coco']['mAP']:.4f}, {final['measured_latency_ms']:.3f} ms measured "
          f"for a {summary['budget']['ms']:g} ms budget, {summary['total_seconds']:.0f} s in all"
          + (f"; {summary['compare']['label']} retrained alike: mAP {summary['compare']['coco']['mAP']:.4f}"
             if "compare" in summary else ""))
    return 0
