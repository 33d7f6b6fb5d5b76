"""nas eval CKPT --data DIR [--input-size N] [--out DIR]   (or ARCH --weights CKPT)"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mAP of a checkpoint on a dataset's validation split",
        description="Evaluate a checkpoint (model.pt, best.pt or last.pt of a retrain; their EMA weights) on the "
        "validation split of a COCO-format dataset with the evaluation preprocessing and post-processing of "
        "training, and write metrics.json (coco: the twelve COCO bbox numbers; params; flops) into the run "
        "directory runs/eval/<name>.",
    )
    p.add_argument("model", metavar="CKPT", help="checkpoint to evaluate (model.pt, best.pt, last.pt): it records "
                   "its architecture, classes and input size")
    p.add_argument("--weights", metavar="CKPT", help="the older form: the first argument is then the architecture "
                   "(a preset or a YAML), checked against the checkpoint")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="COCO-format dataset (COCO 2017 or simple layout); its validation split is used")
    p.add_argument("--input-size", type=int, help="evaluate at this input size (default: the one it was trained at)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8, as in training)")
    p.add_argument("--workers", type=int,
                   help="data-loading worker processes (default: none on a CPU, min(4, cores) on a GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/eval/<name>)")
    p.add_argument("--name", help="run name under runs/eval (default: the checkpoint's folder and a timestamp)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.eval_checkpoint import evaluate_checkpoint
    from ..engine.trained import model_and_weights

    arch, weights = model_and_weights(args.model, args.weights, "eval")
    metrics = evaluate_checkpoint(arch, weights, args.data, out=args.out, name=args.name,
                                  input_size=args.input_size, batch_size=args.batch_size, workers=args.workers,
                                  device=args.device)
    coco = metrics["coco"]
    print(f"mAP {coco['mAP']:.4f}  mAP50 {coco['mAP50']:.4f}  mAP75 {coco['mAP75']:.4f}  "
          f"on {metrics['images']} images; wrote {metrics['run_dir']}/metrics.json")
    return 0
