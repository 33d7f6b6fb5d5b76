"""Do candidates score the same on a GPU as on the CPU? Scores a fixed set of architectures of a
trained supernet with `nas evolve`'s scorer (`evolution.scoring.CandidateScorer`: inherited
weights, exact BN statistics, COCO mAP on the supernet's search split) once on the CPU and once
on `--device`, and reports the largest absolute mAP difference (the bar: 0.002).

The architectures are the space's largest and smallest and `--random` more drawn from a fixed
seed. Floating-point sums run in another order on a GPU, so scores are close, not identical.

    python benchmarks/gpu_score_parity.py --supernet runs/supernet/qs/supernet.pt --data data/shapes \\
        --device cuda --out runs/bench/gpu_score_parity.json
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from train_common import write_result

from evolution.data import prepare_subsets
from evolution.scoring import CandidateScorer
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.data import resolve_data
from picodet_nas.space import SearchSpace

BAR = 0.002


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--random", type=int, default=6)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--val-images", type=int, default=96)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/bench/gpu-score-parity"))
    ap.add_argument("--out")
    args = ap.parse_args()

    state, meta = load_model_weights(args.supernet)
    space = SearchSpace.from_dict(meta["space_definition"], source=str(args.supernet))
    split = meta.get("search_split") or {}
    subsets = prepare_subsets(resolve_data(args.data), args.run_dir, calib_images=args.calib_images,
                              val_images=args.val_images, seed=0, batch_size=16,
                              held_out_ids=split.get("held_out_ids"))
    rng = random.Random(0)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(args.random)]
    rows = []
    scorers = {d: CandidateScorer(space.to_dict(), int(meta["num_classes"]), state, subsets.data, threads=None,
                                  device=d) for d in ("cpu", args.device)}
    for arch in archs:
        scores = {d: s.score(arch) for d, s in scorers.items()}
        rows.append({"arch": arch.key(), "cpu_mAP": scores["cpu"]["map"], "device_mAP": scores[args.device]["map"],
                     "abs_diff": abs(scores["cpu"]["map"] - scores[args.device]["map"]),
                     "cpu_s": scores["cpu"]["score_seconds"], "device_s": scores[args.device]["score_seconds"]})
        print(f"{rows[-1]['cpu_mAP']:.4f} cpu  {rows[-1]['device_mAP']:.4f} {args.device}  "
              f"diff {rows[-1]['abs_diff']:.5f}  {arch.key()}", flush=True)
    worst = max(r["abs_diff"] for r in rows)
    print(f"largest |mAP difference| {worst:.5f} (bar {BAR}): {'met' if worst <= BAR else 'NOT met'}")
    write_result(args.out, {"benchmark": "gpu_score_parity", "command": " ".join(sys.argv),
                            "device": args.device, "rows": rows, "max_abs_diff": worst, "bar": BAR,
                            "met": worst <= BAR})


if __name__ == "__main__":
    main()
