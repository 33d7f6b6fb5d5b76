"""How many BN-calibration images does a score need? The same networks scored with calibration
sets of several sizes, each size drawn with several seeds, on the same held-out images.

Two kinds of network, both scored by the one scoring path (`NetworkScorer`, exact BN statistics
of the network's own activations on the calibration images, then COCO mAP on the search split):

* subnets of a trained supernet (`--supernet`, a `nas train-supernet` run), as `nas evolve`
  scores candidates;
* networks trained alone (`--ground-truth`, a `benchmarks/ground_truth.py` result), as the
  ground truth scores them; these are also scored with the running statistics training left,
  without recalibration, for reference.

The spread across calibration seeds at one size is noise that every comparison made at that
size inherits. Results are rewritten after every score, so an interrupted run keeps what it did.

    python benchmarks/calibration_size.py --ground-truth benchmarks/results/ground_truth.json \\
        --supernet runs/bench/ranking-vs-gt-.../supernet-sandwich-r1-e20 --archs 0 3 \\
        --sizes 64 256 512 --seeds 0 1 --out benchmarks/results/calibration_size.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from train_common import write_result

from evolution.data import prepare_subsets
from evolution.scoring import NetworkScorer
from picodet_nas.arch import Arch
from picodet_nas.checkpoint import apply_state, load_model_weights
from picodet_nas.data import CocoDetection, resolve_data
from picodet_nas.data.split import held_out_indices
from picodet_nas.engine.evaluate import predict_batches
from picodet_nas.engine.trained import load_trained_model
from picodet_nas.evaluation import coco_evaluate
from picodet_nas.space import load_space
from supernet import Supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ground-truth", type=Path, required=True, help="a benchmarks/ground_truth.py result JSON")
    ap.add_argument("--supernet", type=Path, help="a nas train-supernet run folder on the ground truth's data")
    ap.add_argument("--archs", type=int, nargs="+", default=[0, 3], help="ground-truth architecture indices")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512], help="calibration set sizes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="calibration draws per size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    gt = json.loads(args.ground_truth.read_text())
    run_dir = Path(gt["run_dir"])
    rows = {r["index"]: r for r in gt["archs"]}
    missing = [i for i in args.archs if i not in rows]
    if missing:
        sys.exit(f"{args.ground_truth}: no architecture {missing}")
    archs = {i: Arch.from_dict(rows[i]["arch"]) for i in args.archs}
    paths = resolve_data(Path(gt["data"]))
    supernet, held = None, None
    if args.supernet is not None:
        state, meta = load_model_weights(args.supernet / "supernet.pt")
        held = meta["search_split"]["held_out_ids"]
        supernet = Supernet.for_state(load_space(gt["space"]), int(meta["num_classes"]), state)
        apply_state(supernet, state, args.supernet / "supernet.pt")
    else:
        train = CocoDetection(paths.train_ann, paths.train_images)
        held = [train.image_ids[i] for i in held_out_indices(len(train), gt["search_fraction"], gt["data_seed"])]

    result = {"benchmark": "calibration_size", "command": " ".join(sys.argv), "ground_truth": str(args.ground_truth),
              "supernet": str(args.supernet) if args.supernet else None, "sizes": args.sizes, "seeds": args.seeds,
              "scores": [], "summary": {}}

    def record(kind: str, arch: int, calib, seed, value: float) -> None:
        result["scores"].append({"kind": kind, "arch": arch, "calib_images": calib, "calib_seed": seed, "mAP": value})
        print(f"{kind:<8} arch {arch:>2} calib {calib!s:>7} seed {seed!s:>4}: mAP {value:.4f}", flush=True)
        result["summary"] = summarise(result["scores"])
        result["total_time_s"] = round(time.perf_counter() - started, 1)
        write_result(args.out, result)

    scratch = run_dir / "calibration-size"
    for size in args.sizes:
        for seed in args.seeds:
            subsets = prepare_subsets(paths, scratch / f"c{size}-s{seed}", calib_images=size, val_images=None,
                                      seed=seed, batch_size=16, held_out_ids=held)
            scorer = NetworkScorer(subsets.data)
            for i, arch in archs.items():
                if supernet is not None:
                    record("supernet", i, subsets.calib_images, seed,
                           scorer.score(supernet.extract(arch), arch.input_size)["mAP"])
                weights = run_dir / f"a{i}-s0" / "model.pt"
                if weights.is_file():
                    model, _, _ = load_trained_model(arch, weights)
                    record("alone", i, subsets.calib_images, seed, scorer.score(model, arch.input_size)["mAP"])
                    if size == args.sizes[0] and seed == args.seeds[0]:
                        model, _, _ = load_trained_model(arch, weights)
                        cache = scorer.eval_cache(arch.input_size)
                        dets = predict_batches(model.eval(), cache.batches(16, torch.device("cpu")),
                                               scorer.val_set.label_to_cat_id, torch.device("cpu"))
                        record("alone", i, "trained", None,
                               coco_evaluate(scorer.val_set.coco, dets, cache.image_ids)["mAP"])


def summarise(scores: list[dict]) -> dict:
    """Per kind, architecture and calibration size: mean, and spread (max - min) over the seeds."""
    groups: dict[str, list[float]] = {}
    for s in scores:
        groups.setdefault(f"{s['kind']} arch {s['arch']} calib {s['calib_images']}", []).append(s["mAP"])
    return {k: {"mean": statistics.mean(v), "spread": max(v) - min(v), "n": len(v)} for k, v in groups.items()}


if __name__ == "__main__":
    main()
