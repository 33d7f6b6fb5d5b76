"""Which gene does a supernet think matters? Score architectures inside trained supernets while
changing one gene group at a time.

For each base architecture of a `benchmarks/ground_truth.py` result (`--archs`), every variant
sets one group of genes to another value (all kernels 3 or 5, all channel ratios 0.5 or 1.0,
neck channels, head depth, input size) and keeps the rest. Each variant is scored in every given
supernet by `nas evolve`'s scorer (`evolution.scoring.CandidateScorer`), on the same
calibration and held-out images as the ranking benchmark. The change in score against the base
is what the supernet credits that gene with; set beside the ground truth, where the ground truth
has a pair that differs mostly in that gene, it shows which gene the supernet mis-credits.

    python benchmarks/gene_sensitivity.py --ground-truth benchmarks/results/ground_truth.json \\
        --supernets runs/bench/ranking-vs-gt-.../supernet-sandwich-r1-e20 ... --archs 12 13 \\
        --out benchmarks/results/gene_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from train_common import write_result

from evolution.data import prepare_subsets
from evolution.scoring import CandidateScorer
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.data import resolve_data
from picodet_nas.space import SearchSpace, load_space


def variants(arch: dict, space: SearchSpace) -> dict[str, dict]:
    """name -> the architecture `arch` with one gene group changed (changes that leave it as it
    is are left out)."""
    n, ch = len(arch["kernel_size"]), space.choices
    out = {}
    for k in ch.get("kernel_size", ()):
        out[f"kernel {k}"] = {**arch, "kernel_size": [k] * n}
    for r in ch.get("channel_ratio", ()):
        out[f"ratio {r:g}"] = {**arch, "channel_ratio": [r] * n}
    for dim, label in (("neck_channels", "neck"), ("head_convs", "head"), ("input_size", "input")):
        for v in ch.get(dim, ()):
            out[f"{label} {v}"] = {**arch, dim: v}
    return {name: a for name, a in out.items() if a != arch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ground-truth", type=Path, required=True)
    ap.add_argument("--supernets", type=Path, nargs="+", required=True, help="nas train-supernet run folders")
    ap.add_argument("--archs", type=int, nargs="+", required=True, help="ground-truth architecture indices")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()

    started = time.perf_counter()
    gt = json.loads(args.ground_truth.read_text())
    space = load_space(gt["space"])
    rows = {r["index"]: r for r in gt["archs"]}
    result = {"benchmark": "gene_sensitivity", "command": "python " + " ".join(sys.argv),
              "ground_truth": str(args.ground_truth), "calib_images": gt["calib_images"], "supernets": {}}
    for run in args.supernets:
        state, meta = load_model_weights(run / "supernet.pt")
        subsets = prepare_subsets(resolve_data(gt["data"]), run / "sensitivity-scoring",
                                  calib_images=gt["calib_images"], val_images=None, seed=int(gt["data_seed"]),
                                  batch_size=16, held_out_ids=meta["search_split"]["held_out_ids"])
        scorer = CandidateScorer(space.to_dict(), int(meta["num_classes"]), state, subsets.data,
                                 threads=args.threads)
        per_arch = {}
        for index in args.archs:
            base = rows[index]["arch"]
            base_map = scorer.score(base)["map"]
            deltas = {}
            for name, arch in variants(base, space).items():
                deltas[name] = scorer.score(arch)["map"] - base_map
                print(f"{run.name} arch {index} {name:>10}: {deltas[name]:+.4f} (base {base_map:.4f})", flush=True)
            per_arch[str(index)] = {"base_mAP": base_map, "ground_truth": rows[index]["mAP"], "delta": deltas}
            result["supernets"][run.name] = per_arch
            result["total_time_s"] = round(time.perf_counter() - started, 1)
            write_result(args.out, result)


if __name__ == "__main__":
    main()
