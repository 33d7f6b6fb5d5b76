"""Which BN statistics should a trained small-batch network be scored with? One set of trained
weights, scored on its validation split with the BN statistics recomputed from different images.

Columns (all on the same weights, the same validation images and evaluator):

* `running`: the running statistics training left (the cycle-EMA of training-mode batch
  statistics of augmented, multi-scale batches); the run must have been trained with
  `--calib-images 0` so that its model.pt still holds them;
* `recal-eval`: exact eval-mode statistics (`picodet_nas.bn_stats.recalibrate_bn`) on training
  images preprocessed as for evaluation (whole image, bicubic, the evaluation size): the default
  of `nas retrain` since the BN-fidelity work;
* `recal-aug`: the same exact eval-mode statistics, on training batches as training draws them
  (crop/expand/flip/colour augmentation, the multi-scale sizes);
* `recal-aug-eval-size`: training augmentation, every batch resized to the evaluation size;
* `recal-train-aug`: training-mode statistics (each BN sees inputs normalised by its batch of
  `--batch-size`) on the augmented batches: what the running statistics estimate, for the final
  weights only;
* `oracle-val`: exact eval-mode statistics on the validation images themselves. Not a usable
  treatment (it looks at the images it reports on); it says how much of any gap is a shift
  between the training and the validation images;
* `batch-stats`: each BN normalises with the statistics of each evaluation batch of `--batch-size`.

With `--criteria`, each treatment is also scored on training data only, to see whether a choice
between treatments can be made without the validation split: `train-loss`, the detection loss
in eval mode on other augmented training batches (another seed than the calibration batches),
and `train-mAP`, COCO mAP on the training images preprocessed as for evaluation.

    python benchmarks/bn_treatments.py --run runs/bench/bccd-running --data ../shared/datasets/bccd \\
        --input-size 320 --out benchmarks/results/bn_treatments_bccd.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch
from train_common import write_result

TREATMENTS = ("running", "recal-eval", "recal-aug", "recal-aug-eval-size", "recal-train-aug", "oracle-val",
              "batch-stats")


def augmented_batches(train_set, sizes, batch_size: int, num_images: int, seed: int) -> list[torch.Tensor]:
    """Training batches as `nas retrain` draws them (epoch 0 of `seed`), the first `num_images` images."""
    from picodet_nas.data.loader import build_train_loader

    out, seen, epoch = [], 0, 0
    while seen < num_images:
        loader = build_train_loader(train_set, batch_size, sizes, workers=0, seed=seed, epoch=epoch)
        for images, _ in loader:
            out.append(images)
            seen += images.shape[0]
            if seen >= num_images:
                break
        epoch += 1
    return out


def training_loss(model, train_set, sizes, batch_size: int, num_images: int, seed: int) -> float:
    """Mean detection loss per image, in eval mode, on augmented training batches of `seed`."""
    from picodet_nas.data.loader import build_train_loader
    from picodet_nas.losses import PicoDetLoss
    from picodet_nas.models.detector import flatten_outputs

    loss_fn, total, seen = PicoDetLoss(model.num_classes), 0.0, 0
    loader = build_train_loader(train_set, batch_size, sizes, workers=0, seed=seed, epoch=0)
    model.eval()
    with torch.no_grad():
        for images, targets in loader:
            cls, reg, priors = flatten_outputs(model(images), model.num_classes)
            loss, _ = loss_fn(cls, reg, priors, [t["boxes"] for t in targets], [t["labels"] for t in targets])
            total += loss.item() * images.shape[0]
            seen += images.shape[0]
            if seen >= num_images:
                break
    return total / seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, nargs="+", required=True,
                    help="retrain run folders trained with --calib-images 0 (their model.pt is scored)")
    ap.add_argument("--arch", default="picodet-s")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--input-size", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size (batch-stats, recal-train-aug)")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=123, help="seed of the augmented calibration batches")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--criteria", action="store_true", help="also score each treatment on training data only")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from bn_batch_stats import with_batch_stats

    from picodet_nas.bn_stats import recalibrate_bn
    from picodet_nas.data import CalibCache, resolve_data
    from picodet_nas.data.coco import CocoDetection
    from picodet_nas.engine.config import multiscale_sizes
    from picodet_nas.engine.evaluate import evaluate_coco
    from picodet_nas.engine.trained import load_trained_model

    paths = resolve_data(args.data)
    val = CocoDetection(paths.val_ann, paths.val_images)
    train_set = CocoDetection(paths.train_ann, paths.train_images)
    size = args.input_size
    n = args.calib_images
    calib = {
        "recal-eval": CalibCache(train_set, size, num_images=n, augment=False).batches(32),
        "recal-aug": augmented_batches(train_set, multiscale_sizes(size), args.batch_size, n, args.seed),
        "recal-aug-eval-size": augmented_batches(train_set, (size,), args.batch_size, n, args.seed),
        "oracle-val": CalibCache(val, size, num_images=n, augment=False).batches(32),
    }
    calib = {k: list(v) for k, v in calib.items()}
    rows = []
    print(f"{'run':<40} " + " ".join(f"{t:>11.11}" for t in TREATMENTS), flush=True)
    for run in args.run:
        reference, meta, _ = load_trained_model(args.arch, run / "model.pt", size)
        row = {"run": str(run)}
        for name in TREATMENTS:
            model = copy.deepcopy(reference)
            if name == "recal-train-aug":
                recalibrate_bn(model, calib["recal-aug"], n, mode="train")
            elif name in calib:
                recalibrate_bn(model, calib[name], n, mode="eval")
            elif name == "batch-stats":
                with_batch_stats(model, "")
            model.eval()
            row[name] = evaluate_coco(model, val, size, batch_size=args.batch_size)["mAP"]
            if args.criteria and name not in ("oracle-val", "batch-stats"):
                row[f"{name}:train-loss"] = training_loss(model, train_set, multiscale_sizes(size), args.batch_size,
                                                          n, args.seed + 1)
                row[f"{name}:train-mAP"] = evaluate_coco(model, train_set, size, batch_size=args.batch_size)["mAP"]
                print(f"  {name}: val {row[name]:.4f} train-loss {row[f'{name}:train-loss']:.4f} "
                      f"train-mAP {row[f'{name}:train-mAP']:.4f}", flush=True)
        rows.append(row)
        print(f"{str(run)[-40:]:<40} " + " ".join(f"{row[t]:>11.4f}" for t in TREATMENTS), flush=True)
    write_result(args.out, {"benchmark": "bn_treatments", "command": "python benchmarks/bn_treatments.py "
                            + json.dumps({k: str(v) for k, v in vars(args).items()}), "rows": rows})


if __name__ == "__main__":
    main()
