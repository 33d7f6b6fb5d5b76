"""Where does a small-batch model depend on batch statistics? mAP of a trained model when the BN
layers of one part of the network normalise with the statistics of each evaluation batch
instead of their running statistics (README, "Small batches and BatchNorm").

Rows: eval mode (running statistics everywhere), batch statistics everywhere, then in one top-level
part at a time (backbone, neck, head), then in one backbone block at a time. Evaluation batches
are `--batch-size` validation images in dataset order, the same for every row.

    python benchmarks/bn_batch_stats.py --weights runs/retrain/s/model.pt --data DIR --input-size 192
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn
from train_common import write_result

from picodet_nas.data import resolve_data
from picodet_nas.data.coco import CocoDetection
from picodet_nas.engine.evaluate import evaluate_coco
from picodet_nas.engine.trained import load_trained_model


def bn_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def with_batch_stats(model: nn.Module, prefix: str) -> int:
    """Make the BN layers under `prefix` ('' = all) use batch statistics in eval mode; returns how many."""
    count = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (name + ".").startswith(prefix):
            m.running_mean = m.running_var = None  # PyTorch then normalises with the batch's statistics
            m.track_running_stats = False
            count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, type=Path, help="a retrain checkpoint (model.pt, best.pt, last.pt)")
    ap.add_argument("--arch", default="picodet-s", help="its architecture: a preset or a YAML (default: picodet-s)")
    ap.add_argument("--data", required=True, type=Path, help="COCO-format dataset; its validation split is used")
    ap.add_argument("--input-size", type=int, help="evaluation input size (default: the architecture's)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per evaluation batch (default: 8)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    paths = resolve_data(args.data)
    val = CocoDetection(paths.val_ann, paths.val_images)
    reference, _, _ = load_trained_model(args.arch, args.weights, args.input_size)
    size = reference.arch.input_size
    blocks = sorted({".".join(n.split(".")[:3]) for n in bn_names(reference) if n.startswith("backbone.blocks.")},
                    key=lambda n: int(n.split(".")[2]))
    rows = [("eval mode", None), ("all", "")] + [(p, p + ".") for p in ("backbone", "neck", "head")]
    rows += [(b, b + ".") for b in blocks]

    results = []
    print(f"{'batch statistics in':<22} {'BN':>4} {'mAP':>7} {'mAP50':>7}")
    for label, prefix in rows:
        model = copy.deepcopy(reference)
        count = 0 if prefix is None else with_batch_stats(model, prefix)
        model.eval()
        coco = evaluate_coco(model, val, size, batch_size=args.batch_size)
        results.append({"part": label, "bn_layers": count, "mAP": coco["mAP"], "mAP50": coco["mAP50"]})
        print(f"{label:<22} {count:>4} {coco['mAP']:>7.4f} {coco['mAP50']:>7.4f}", flush=True)
    write_result(args.out, {"benchmark": "bn_batch_stats", "weights": str(args.weights), "arch": args.arch,
                            "input_size": size, "batch_size": args.batch_size, "rows": results})


if __name__ == "__main__":
    main()
