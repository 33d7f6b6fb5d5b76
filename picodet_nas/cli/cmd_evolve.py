"""nas evolve --supernet CKPT --latency-table TABLE --latency-budget 17ms --data DIR"""

from __future__ import annotations

import argparse

from .config import add_config_flags, resolve


def _count_or_all(text: str) -> int | str:
    """A number of images, or 'all' (`evolve_settings` makes it None, EvolveConfig's 'all')."""
    if text.lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}") from None
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "evolve",
        help="evolutionary search for the most accurate subnet under a latency budget",
        description="Search the supernet's space for the subnet with the highest mAP whose predicted latency "
        "meets the budget. Every candidate is checked against the latency table before it is scored; scoring "
        "takes the supernet's weights, recalibrates BN on fixed training images and computes COCO mAP@[.5:.95] "
        "on a fixed subset of the supernet's search split (training images it never trained on; never the "
        "validation split); the best few are scored again on the whole split before best.yaml is chosen. "
        "Candidates are scored in parallel by Ray workers "
        "(a local Ray instance by default, --address joins a cluster) and every score is stored at once in an "
        "Optuna study (SQLite in the run folder by default; optuna-dashboard opens it), so a killed search "
        "continues with --resume, scoring nothing twice. Writes best.yaml (for nas retrain), pareto.csv, "
        "pareto.png, generations.csv, config.yaml and evolve.log into runs/evolve/<name>/.",
    )
    need = p.add_argument_group("inputs")
    need.add_argument("--supernet", required=True, metavar="CKPT",
                      help="supernet checkpoint written by nas train-supernet (supernet.pt)")
    need.add_argument("--latency-table", required=True, metavar="TABLE",
                      help="latency table of the same search space (nas profile-device)")
    need.add_argument("--latency-budget", required=True, metavar="BUDGET",
                      help="largest predicted latency a candidate may have: '17ms', '17 ms', '17' (milliseconds) "
                           "or '0.017s'")
    need.add_argument("--data", required=True, metavar="DIR",
                      help="COCO-format data the supernet was trained on (COCO 2017 or the simple layout): "
                           "scoring images are the training images the supernet held out (its search split), "
                           "calibration images the other training images; the val split is not read")

    ea = p.add_argument_group("search (defaults: SPOS / DetNAS)")
    ea.add_argument("--strategy", choices=("ga", "nsga2"), default="ga",
                    help="ga (default): top-k parents, per-gene mutation, uniform crossover, random feasible fill; "
                         "nsga2: Optuna's NSGAIISampler on (mAP up, latency down) with the budget as a constraint")
    ea.add_argument("--population", type=int, default=50, help="candidates per generation (default: 50)")
    ea.add_argument("--parents", type=int, default=10,
                    help="ga: best candidates so far that breed the next generation (default: 10)")
    ea.add_argument("--mutations", type=int, default=25, help="ga: mutants per generation (default: 25)")
    ea.add_argument("--crossovers", type=int, default=25, help="ga: crossovers per generation (default: 25)")
    ea.add_argument("--mutation-prob", type=float, default=0.1,
                    help="probability that a gene is redrawn in a mutant, ga and nsga2 (default: 0.1)")
    ea.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                    help="the deployment's precision, which the latency table must time (default: fp32; int8: a "
                         "table of nas profile-device --precision int8)")
    ea.add_argument("--no-seed-uniform", dest="seed_uniform", action="store_false", default=None,
                    help="do not start generation 0 from the space's uniform-width networks that meet the budget "
                         "(by default they come first, the rest is random): without them a short search can stall "
                         "in a corner of the space that a hand-designed network beats; a resumed search keeps its own choice)")
    ea.add_argument("--generations", type=int, default=20,
                    help="generations; may be raised on --resume to search longer (default: 20)")
    ea.add_argument("--seed", type=int, default=0,
                    help="seed of the search; the same seed and data give the same candidates and best.yaml "
                         "with any number of workers (default: 0)")

    sc = p.add_argument_group("scoring")
    sc.add_argument("--calib-images", type=_count_or_all, default=256, metavar="N|all",
                    help="training images (outside the search split) on which each candidate gets exact BN "
                         "statistics, a fixed subset augmented once as in training; each worker prepares them once "
                         "per input size and keeps them "
                         "as uint8 (256 at 320 px: 79 MB) (default: 256)")
    sc.add_argument("--val-images", "--score-images", dest="val_images", type=_count_or_all, default=500,
                    metavar="N|all",
                    help="images of the supernet's search split (training images it never trained on; never the "
                         "validation split) each candidate is scored on, a fixed subset (default: 500)")
    sc.add_argument("--rescore-top", type=int, default=5, metavar="K",
                    help="before best.yaml is chosen, score the K best candidates again on more search-split "
                         "images (--rescore-images) and choose among them by that score (default: 5; 0: off)")
    sc.add_argument("--rescore-images", type=_count_or_all, default="all", metavar="N|all",
                    help="search-split images of the re-scoring (default: all of them)")
    sc.add_argument("--min-lead-z", type=float, default=2.0, metavar="Z",
                    help="keep a searched winner only if it leads the best uniform-width network that meets the "
                         "budget by Z standard errors of the paired score difference on the re-scoring images "
                         "(delete-half jackknife); otherwise best.yaml is that uniform network, since a smaller "
                         "lead is a tie the scores cannot resolve (default: 2; 0: off)")
    sc.add_argument("--lead-halves", type=int, default=50, metavar="N",
                    help="random halves of the images for that standard error (default: 50)")
    sc.add_argument("--batch-size", type=int, default=16,
                    help="images per forward pass when scoring; does not change the scores (default: 16)")
    sc.add_argument("--data-seed", type=int, default=0,
                    help="seed of the calibration and held-out subsets, kept apart from --seed so that searches "
                         "with different seeds score on the same images (default: 0)")
    sc.add_argument("--no-references", dest="references", action="store_false",
                    help="do not score the space's uniform-width networks for the Pareto plot")

    ray = p.add_argument_group("workers")
    ray.add_argument("--workers", type=int, default=None, metavar="N",
                     help="Ray workers, each holding the supernet once (default: CPUs / threads per worker; "
                          "0: score in this process without Ray)")
    ray.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                     help="PyTorch threads per worker; 1 is fastest for small detectors on CPUs (default: 1)")
    ray.add_argument("--address", default=None,
                     help="Ray cluster to join ('auto' or host:port; default: the RAY_ADDRESS environment "
                          "variable, else a local Ray instance for this search only, without dashboard). Every node "
                          "needs the same picodet-nas installed; the scoring images travel through Ray's object "
                          "store, so only this machine reads --data; clusters with token authentication need "
                          "RAY_AUTH_TOKEN here")
    ray.add_argument("--device", default="auto",
                     help="where candidates are scored: auto (CUDA when this machine has a GPU), cpu, cuda, cuda:N "
                          "(default: auto)")
    ray.add_argument("--gpus-per-worker", type=float, default=None, metavar="F",
                     help="share of a GPU each Ray worker asks for, e.g. 0.5 for two workers per GPU (default: 1 "
                          "with --device cuda; the default --workers then fills the cluster's GPUs)")

    out = p.add_argument_group("run")
    out.add_argument("--name", help="run name: the run folder is runs/evolve/NAME "
                                    "(default: <space>-<budget>ms-<strategy>-<date>-<time>)")
    out.add_argument("--out", metavar="DIR", help="run folder (overrides --name); never overwritten silently")
    out.add_argument("--storage", metavar="URL",
                     help="SQLAlchemy URL of the database holding the history "
                          "(default: sqlite:///<run folder>/history.db)")
    out.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                     help="continue an interrupted search: RUN_DIR, else the one --out/--name names, else the latest "
                          "under runs/evolve. What was scored is looked up, the same candidate sequence continues")
    out.add_argument("--tensorboard", action="store_true",
                     help="also write the best-so-far mAP per generation as TensorBoard scalars into the run folder's "
                          "tensorboard/ (needs the optional extra: pip install \"picodet-nas[tensorboard]\")")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_config_flags(p, "evolve", shared=("seed", "data"), exclude=("progress",))
    p.set_defaults(handler=run)


def evolve_settings(values: dict) -> dict:
    """`EvolveConfig`'s fields among the command's options ('all' images as None)."""
    from dataclasses import fields

    from evolution.search import EvolveConfig

    names = {f.name for f in fields(EvolveConfig)}
    return {k: (None if v == "all" else v) for k, v in values.items() if k in names}


def run(args: argparse.Namespace) -> int:
    from evolution.search import run_evolve
    from evolution.settings import EvolveConfig

    cfg = EvolveConfig(**evolve_settings(resolve(args)), resume=args.resume)
    result = run_evolve(cfg, progress=args.progress)
    print(result.summary)
    return 0
