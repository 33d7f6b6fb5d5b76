"""Search throughput: candidates scored per minute by 1 and by N Ray workers, and the speed-up.

The same fixed list of feasible candidates is scored by a `RayPool` of each size, exactly as
`nas evolve` scores them (supernet weights put once in the object store, one PyTorch thread
per worker, candidates dispatched as workers free up, BN recalibration + COCO mAP per
candidate; the images decoded once by the driver and shared through the object store). Each pool
first scores a warm-up set (every input size once per worker), which is timed separately as start-up;
the figure is the steady-state rate over the measured candidates. `worker_seconds_per_candidate`
(the time inside a worker) shows contention: it stays flat when every worker has a free core
and grows when the workers (or other processes) share cores. The scores of every pool
size are compared: they must be identical (a score must not depend on the worker).

Inputs are the toy ones of the tests (`tests/toy_search.py`: a random-weight supernet of a tiny
space, an analytic latency table, generated shapes images), unless --space names a space
YAML of your own; the speed-up, not the absolute rate, is the point on a small config.

    python benchmarks/evolve_throughput.py --workers 1 2 --candidates 24 --out runs/bench/evolve_throughput.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from evolution.data import prepare_subsets
from evolution.operators import Constraint, FeasibleSampler, GenomeSpace
from evolution.pools import RayPool, RaySession
from evolution.scoring import NetworkScorer
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.data import resolve_data
from picodet_nas.latency import LatencyPredictor
from picodet_nas.utils.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' toy inputs
from toy_search import TOY_SPACE, make_toy_inputs  # noqa: E402


def candidates_for(predictor: LatencyPredictor, count: int, seed: int) -> list:
    """`count` distinct random architectures of the table's space (no budget: the slowest subnet's
    latency), drawn from a fixed seed."""
    genomes = GenomeSpace(predictor.space, predictor.input_sizes)
    sampler = FeasibleSampler(genomes, Constraint(predictor, predictor.range_ms()["slowest"]))
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        arch = sampler.sample(rng, seen)
        seen.add(arch.key())
        out.append(arch)
    return out


def warmup_set(predictor: LatencyPredictor, workers: int, seed: int) -> list:
    """`workers` architectures per input size: each worker decodes each size's images once."""
    out = []
    for size in predictor.input_sizes:
        rng = random.Random(f"warmup/{seed}/{size}")
        out += [predictor.space.sample(rng).replace(input_size=size) for _ in range(workers)]
    return out


def measure(session: RaySession, workers: int, archs: list, warmup: list, *, state, meta, data, log,
            sizes, device: str = "cpu", gpus_per_worker: float = 0.0) -> dict:
    started = time.perf_counter()
    images = NetworkScorer(data).decoded_images(sizes)  # as nas evolve: decoded once, shared
    pool = RayPool(session, workers=workers, threads_per_worker=1, space_definition=meta["space_definition"],
                   num_classes=meta["num_classes"], state=state, data=data, log=log, images=images, device=device,
                   gpus_per_worker=gpus_per_worker)
    del images
    try:
        for _ in pool.score(warmup):
            pass
        startup = time.perf_counter() - started
        t0 = time.perf_counter()
        results = {arch.key(): result for arch, result in pool.score(archs)}
        seconds = time.perf_counter() - t0
    finally:
        pool.close()
    return {"workers": workers, "candidates": len(archs), "seconds": round(seconds, 3),
            "candidates_per_minute": round(60.0 * len(archs) / seconds, 2),
            "seconds_per_candidate": round(seconds / len(archs), 4),
            "worker_seconds_per_candidate": round(sum(r["score_seconds"] for r in results.values()) / len(archs), 4),
            "startup_and_warmup_s": round(startup, 2), "warmup_candidates": len(warmup),
            "scores": {k: r["map"] for k, r in results.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pool sizes to measure (default: 1 2)")
    p.add_argument("--candidates", type=int, default=24, help="measured candidates per pool size (default: 24)")
    p.add_argument("--calib-images", type=int, default=8, help="BN calibration images per candidate (default: 8)")
    p.add_argument("--val-images", type=int, default=8, help="held-out images per candidate (default: 8)")
    p.add_argument("--image-size", type=int, default=96, help="side of the generated images (default: 96)")
    p.add_argument("--space", type=Path, help="space YAML for the toy supernet (default: evolution.toy.TOY_SPACE)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates and the toy inputs (default: 0)")
    p.add_argument("--work-dir", type=Path, help="where the toy inputs go (default: a temporary folder)")
    p.add_argument("--device", default="cpu", help="where the workers score: cpu or cuda (default: cpu)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="share of a GPU per worker with --device cuda")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()

    logging.basicConfig(level=logging.WARNING)
    if args.work_dir is not None:
        run(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="evolve-bench-") as work:
            run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    log = logging.getLogger("evolution")
    space_doc = yaml.safe_load(args.space.read_text()) if args.space else TOY_SPACE
    toy = make_toy_inputs(work, space=space_doc, train_images=max(16, args.calib_images),
                          val_images=args.val_images, image_size=args.image_size, seed=args.seed)
    predictor = LatencyPredictor.from_file(toy.table)
    subsets = prepare_subsets(resolve_data(toy.data), work / "subsets", calib_images=args.calib_images,
                              val_images=args.val_images, seed=0, batch_size=8)
    state, meta = load_model_weights(toy.supernet)
    meta = {**meta, "space_definition": predictor.space.to_dict()}
    archs = candidates_for(predictor, args.candidates, args.seed)

    load_before = os.getloadavg()
    session = RaySession(None, max(max(args.workers), os.cpu_count() or 1), log)  # one Ray instance for all sizes
    try:
        runs = [measure(session, w, archs, warmup_set(predictor, w, args.seed), state=state, meta=meta,
                        data=subsets.data, log=log, sizes=predictor.input_sizes, device=args.device,
                        gpus_per_worker=args.gpus_per_worker) for w in args.workers]
    finally:
        session.close()
    base = runs[0]
    same = all(r["scores"] == base["scores"] for r in runs)
    for r in runs:
        r["speedup_vs_%d" % base["workers"]] = round(r["candidates_per_minute"] / base["candidates_per_minute"], 3)
        del r["scores"]
    result = {
        "benchmark": "evolve_throughput",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "a speed-up needs as many idle cores as workers; other processes' load shows here"},
        "config": {"space": predictor.space.name, "input_sizes": list(predictor.input_sizes),
                   "calib_images": subsets.calib_images, "val_images": subsets.val_images,
                   "image_size": args.image_size, "threads_per_worker": 1, "candidates": args.candidates,
                   "device": args.device, "gpus_per_worker": args.gpus_per_worker},
        "runs": runs,
        "speedup": runs[-1]["speedup_vs_%d" % base["workers"]],
        "scores_identical_across_pool_sizes": same,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
