"""Why does a small-batch PicoDet lose its accuracy in eval mode? One controlled matrix.

Rows are training variants of picodet-s from scratch with the small-batch CPU recipe (batch 8,
no BN freeze), each changing one thing against `today`, several seeds each. Columns are ways
of scoring the same trained weights, all on the same images with the same evaluator
(`picodet_nas.engine.evaluate.evaluate_coco`):

* `ema`: eval mode with the BN running statistics the training left (today's `nas retrain`);
* `recal-train`: the statistics recomputed on training images with BN in training mode, in
  batches of 16 (the supernet scoring before this benchmark);
* `recal-eval`: the statistics recomputed exactly as eval mode uses them, BN by BN in forward
  order (`picodet_nas.bn_stats.recalibrate_bn`), on whole training images preprocessed for
  evaluation (the default now uses augmented training crops: benchmarks/bn_treatments.py);
* `batch-stats`: every BN normalises with the statistics of each evaluation batch of 8.

The data is a shapes set generated with another seed than every set the README reports on
(`--data-seed 1`, 400 training / 200 validation images at 192 px): the recipe chosen from this
table is not tuned on the images its figures are reported on.

    python benchmarks/bn_diagnosis.py --out benchmarks/results/bn_diagnosis.json
    python benchmarks/bn_diagnosis.py --variants today interp-image --seeds 0 --epochs 2   # smoke run

Training runs are kept under runs/bench/bn-diagnosis/ and reused (a killed run resumes), so
the script can be re-run to add seeds or variants; scores are recomputed each time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from pathlib import Path

import torch
from train_common import BENCH_ROOT, ensure_shapes, run_retrain, write_result

# one change against `today` per row (the flags `nas retrain` takes)
VARIANTS: dict[str, list[str]] = {
    "today": ["--train-interp", "batch"],
    "interp-image": ["--train-interp", "image"],
    "interp-bicubic": ["--train-interp", "bicubic"],
    "bicubic-one-size": ["--train-interp", "bicubic", "--train-sizes", "192"],
    "no-ema-buffers": ["--train-interp", "batch", "--no-ema-buffers"],
    "interp-image-no-ema-buffers": ["--train-interp", "image", "--no-ema-buffers"],
    "bn-freeze-3": ["--train-interp", "batch", "--bn-freeze-epochs", "3"],
}
SCORINGS = ("ema", "recal-train", "recal-eval", "batch-stats")


def train(args, data: Path, variant: str, seed: int) -> Path:
    run_dir = BENCH_ROOT / "bn-diagnosis" / f"{variant}-e{args.epochs}-s{seed}"
    if (run_dir / "model.pt").is_file():
        return run_dir
    extra = list(VARIANTS[variant]) + (["--resume", str(run_dir)] if (run_dir / "last.pt").is_file() else [])
    run_retrain("picodet-s", data, run_dir, input_size=args.input_size, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, warmup_iters=args.warmup_iters, seed=seed,
                threads=args.threads, workers=0, eval_interval=args.epochs, grad_clip=5.0,
                extra=extra + ["--no-measure-latency", "--calib-images", "0"])
    return run_dir


def score(run_dir: Path, data: Path, input_size: int, calib_images: int) -> dict[str, float]:
    from bn_batch_stats import with_batch_stats

    from picodet_nas.bn_stats import recalibrate_bn
    from picodet_nas.data import CalibCache, resolve_data
    from picodet_nas.data.coco import CocoDetection
    from picodet_nas.engine.evaluate import evaluate_coco
    from picodet_nas.engine.trained import load_trained_model

    paths = resolve_data(data)
    val = CocoDetection(paths.val_ann, paths.val_images)
    train_set = CocoDetection(paths.train_ann, paths.train_images)
    calib = CalibCache(train_set, input_size, num_images=calib_images, augment=False)
    reference, _, _ = load_trained_model("picodet-s", run_dir / "model.pt", input_size)
    out = {}
    for name in SCORINGS:
        model = copy.deepcopy(reference)
        if name == "recal-train":
            recalibrate_bn(model, calib.batches(16), len(calib), mode="train")
        elif name == "recal-eval":
            recalibrate_bn(model, calib.batches(16), len(calib), mode="eval")
        elif name == "batch-stats":
            with_batch_stats(model, "")
        model.eval()
        out[name] = evaluate_coco(model, val, input_size, batch_size=8)["mAP"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--input-size", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--warmup-iters", type=int, default=20)
    ap.add_argument("--train-images", type=int, default=400)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--calib-images", type=int, default=128, help="training images for the recalibrations")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--train-only", action="store_true", help="train the missing runs, score nothing")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = ensure_shapes(args.train_images, args.val_images, size=args.input_size, seed=args.data_seed)
    runs = {(v, s): train(args, data, v, s) for v in args.variants for s in args.seeds}
    if args.train_only:
        return
    rows = []
    print(f"{'training variant':<28} {'seed':>4} " + " ".join(f"{c:>11}" for c in SCORINGS), flush=True)
    for (variant, seed), run_dir in runs.items():
        scores = score(run_dir, data, args.input_size, args.calib_images)
        rows.append({"variant": variant, "seed": seed, "flags": VARIANTS[variant], **scores})
        print(f"{variant:<28} {seed:>4} " + " ".join(f"{scores[c]:>11.4f}" for c in SCORINGS), flush=True)
    print("\nmean over seeds")
    summary = []
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        means = {c: statistics.mean(r[c] for r in mine) for c in SCORINGS}
        spread = {c: max(r[c] for r in mine) - min(r[c] for r in mine) for c in SCORINGS}
        summary.append({"variant": variant, "mean": means, "spread": spread})
        print(f"{variant:<28} {'':>4} " + " ".join(f"{means[c]:>11.4f}" for c in SCORINGS))
    write_result(args.out, {"benchmark": "bn_diagnosis", "command": "python benchmarks/bn_diagnosis.py "
                            + json.dumps(vars(args)), "data": str(data), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
