"""Memory of a search's scoring workers: 1 against N Ray actors, with the scoring images decoded
once by the driver and shared through Ray's object store (what `nas evolve` does), and, for
comparison, decoded by every actor itself (what it did before).

Each pool scores one candidate per input size per worker (the space's smallest network at that
size: every cached image is touched), then the proportional set size (PSS, from
/proc/PID/smaps_rollup: shared pages are split among the processes that map them) and the
resident set size (RSS) of every actor process are read, and of the raylet, which holds the
object store. The figure is the node's scoring memory: the actors' PSS plus the raylet's. The
defaults are `nas evolve`'s own (256 calibration and 500 scored images) in the
`picodet_s_joint` space (5 input sizes, 256 to 416 px) with a random-weight supernet; the
memory does not depend on the weights.

    python benchmarks/scoring_memory.py --data runs/bench/shapes-1500-200-320-s0 \\
        --out benchmarks/results/scoring_memory.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from train_common import write_result

from evolution.data import prepare_subsets
from evolution.pools import RayPool, RaySession
from evolution.scoring import NetworkScorer
from picodet_nas.data import CocoDetection, resolve_data
from picodet_nas.space import load_space
from supernet import Supernet

MB = 1024 * 1024


def memory_of(pid: int) -> dict[str, float]:
    """PSS and RSS of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            values[key.lower() + "_mb"] = round(int(rest.split()[0]) * 1024 / MB, 1)
    return values


def raylet_pids(temp_dir: str) -> list[int]:
    """The raylet of the Ray instance whose session files are under `temp_dir` (not another
    Ray running on the machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"raylet") and any(temp_dir.encode() in a for a in cmdline):
                pids.append(int(entry.name))
    return pids


def measure(session, workers: int, shared: bool, *, space, state, num_classes, subsets, sizes, log) -> dict:
    images = NetworkScorer(subsets.data).decoded_images(sizes) if shared else None
    pool = RayPool(session, workers=workers, threads_per_worker=1, space_definition=space.to_dict(),
                   num_classes=num_classes, state=state, data=subsets.data, log=log, images=images)
    del images  # the driver keeps only the object-store copy
    t0 = time.perf_counter()
    warm = [space.smallest().replace(input_size=s) for s in sizes for _ in range(workers)]
    try:
        pids = sorted({int(r["worker"].rsplit(":", 1)[1]) for _, r in pool.score(warm)})
        actors = {pid: memory_of(pid) for pid in pids}
        raylet = [memory_of(pid) for pid in raylet_pids(session.temp_dir)]
    finally:
        pool.close()
    actors_pss = sum(m["pss_mb"] for m in actors.values())
    raylet_pss = sum(m["pss_mb"] for m in raylet)
    row = {"workers": workers, "images": "shared (object store)" if shared else "decoded per actor",
           "actors_seen": len(actors), "actor_memory": list(actors.values()), "actors_pss_mb": round(actors_pss, 1),
           "raylet_pss_mb": round(raylet_pss, 1), "node_scoring_pss_mb": round(actors_pss + raylet_pss, 1),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{workers} actor(s), images {row['images']}: actors PSS {actors_pss:.0f} MiB "
          f"({', '.join('%.0f' % m['pss_mb'] for m in actors.values())}), raylet {raylet_pss:.0f} MiB, "
          f"node {row['node_scoring_pss_mb']:.0f} MiB", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a COCO-format data set (simple or COCO layout)")
    ap.add_argument("--space", default="picodet_s_joint")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/bench/scoring-memory"))
    ap.add_argument("--out")
    args = ap.parse_args()

    logging.basicConfig(level=logging.WARNING)
    log = logging.getLogger("evolution")
    space = load_space(args.space)
    paths = resolve_data(args.data)
    train = CocoDetection(paths.train_ann, paths.train_images)
    if len(train) < args.val_images + args.calib_images:
        sys.exit(f"{paths.train_ann}: {len(train)} training images, need {args.val_images + args.calib_images}")
    num_classes = train.num_classes
    state = Supernet(space, num_classes).state_dict()
    subsets = prepare_subsets(paths, args.run_dir / "subsets", calib_images=args.calib_images,
                              val_images=args.val_images, seed=0, batch_size=16,
                              held_out_ids=train.image_ids[:args.val_images])  # the scored images
    sizes = sorted(space.input_sizes)
    session = RaySession(None, max(args.workers), log)
    rows = []
    try:
        for shared in (True, False):
            for workers in args.workers:
                rows.append(measure(session, workers, shared, space=space, state=state, num_classes=num_classes,
                                    subsets=subsets, sizes=sizes, log=log))
    finally:
        session.close()
    by = {(r["images"], r["workers"]): r["node_scoring_pss_mb"] for r in rows}
    lo, hi = min(args.workers), max(args.workers)
    ratios = {mode: round(by[(mode, hi)] / by[(mode, lo)], 3) for mode in {r["images"] for r in rows}}
    for mode, ratio in ratios.items():
        print(f"{mode}: {hi} actors use {ratio:.2f}x the memory of {lo}")
    write_result(args.out, {"benchmark": "scoring_memory", "command": " ".join(sys.argv), "space": args.space,
                            "input_sizes": sizes, "calib_images": subsets.calib_images,
                            "scored_images": subsets.val_images, "rows": rows,
                            f"ratio_{hi}_vs_{lo}": ratios})


if __name__ == "__main__":
    main()
