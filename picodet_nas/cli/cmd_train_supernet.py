"""nas train-supernet --space SPACE --data DIR [-c CONFIG] [--strategy uniform|sandwich|alternating|correlated] [--init MODEL.pt] [--epochs N] ..."""

from __future__ import annotations

import argparse

from ..space import list_spaces
from .cmd_retrain import TRAIN_OPTIONS, add_training_flags, read_init_file
from .config import add_config_flags, resolve


def register(sub) -> None:
    p = sub.add_parser(
        "train-supernet",
        help="train a search space's weight-sharing supernet one-shot on the detection data",
        description="Train the supernet of a search space with the PicoDet recipe. Each step trains the subnets "
        "the sampling strategy draws (uniform: one random subnet per step; sandwich: largest, smallest and "
        "--num-random random ones), each at its own input size. Every evaluation recalibrates BN and scores the "
        "largest and the smallest subnet. Writes supernet.pt (for nas evolve), last.pt (resumable exactly) and "
        "metrics.csv. Multi-GPU or multi-process: launch with torchrun.",
    )
    p.add_argument("--space", help=f"search space: a registered name ({', '.join(list_spaces())}) or a YAML file")
    add_training_flags(p, "train-supernet")
    p.add_argument("--strategy", choices=("uniform", "sandwich", "alternating", "correlated"),
                   help="subnets per step: uniform (one random; default), sandwich (largest + smallest + random), "
                        "alternating (one per step: largest, smallest, then the random ones) or correlated (one "
                        "per step whose genes share a random level, see --correlation)")
    p.add_argument("--num-random", type=int,
                   help="random subnets per sandwich step or per alternating cycle (default: 2)")
    p.add_argument("--correlation", type=float, metavar="RHO",
                   help="correlated only: the probability that a gene takes the step's level rather than a draw of "
                        "its own (0: uniform; every gene's marginal stays uniform; default: 0.5)")
    p.add_argument("--distill", type=float, metavar="W",
                   help="sandwich only: in-place distillation, the largest subnet of each step teaches the others its "
                        "class scores and box distributions, with weight W beside the detection loss (default: 0)")
    p.add_argument("--head-per-depth", choices=("none", "outputs", "all"),
                   help="head weights of its own for each head depth: none (every depth shares them), outputs (one "
                        "set of output convs per depth; default: it ranks better, README 'Supernet ranking') or all "
                        "(towers and output convs)")
    p.add_argument("--search-fraction", type=float, metavar="F",
                   help="fraction of the training images held out from supernet training as the search split, "
                        "on which subnets and search candidates are scored (default: 0.1)")
    p.add_argument("--split-seed", type=int, metavar="K",
                   help="seed of the search split (default: --seed): supernets of several training seeds that hold "
                        "out the same images")
    p.add_argument("--init", metavar="MODEL.pt",
                   help="start from a pretrained network of the space (a model file, e.g. from nas import-paddle): "
                        "its weights go into the supernet's slices of that subnet; a backbone-only file fills the "
                        "backbone of the largest network with its channel ratios (default: the builder's "
                        "initialisation)")
    add_config_flags(p, "supernet", shared=("seed", "space", "data"), required=("space", "data"))
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from supernet.train import train_supernet

    values = resolve(args)
    options = {k: values[k] for k in (*TRAIN_OPTIONS, "strategy", "num_random", "correlation", "search_fraction", "distill",
                                      "head_per_depth", "split_seed")}
    init = read_init_file(values["init"]) if values.get("init") else None
    summary = train_supernet(values["space"], values["data"], options=options, out=values.get("out"),
                             name=values.get("name"), resume=args.resume, init=init)
    if summary is not None:
        scores = "  ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
        print(f"{summary['run_dir']}: {summary['epochs']} epochs, {summary['wall_time_s']:.0f} s  {scores}")
    return 0
