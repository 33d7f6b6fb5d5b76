"""nas predict CKPT IMAGE|FOLDER... [--out DIR] [--score-thr 0.4]   (or ARCH --weights CKPT)"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="detect objects in images: boxes drawn with class names and scores, plus a JSON file",
        description="Run a trained checkpoint on image files (or every image in the folders given) and write, "
        "for each, a PNG with the boxes, class names and scores drawn, and detections.json (boxes xyxy in "
        "original-image pixels, scores, labels, category ids, class names).",
    )
    p.add_argument("model", metavar="CKPT", help="checkpoint (model.pt of a retrain): it records its architecture, "
                   "classes and input size")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--weights", metavar="CKPT", help="the older form: the first argument is then the architecture "
                   "(a preset or a YAML), checked against the checkpoint")
    p.add_argument("--score-thr", type=float, default=0.4,
                   help="draw and list detections scoring at least this (default: 0.4, the deploy demo's)")
    p.add_argument("--input-size", type=int, help="network input size (default: the one it was trained at)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/predict/<name>)")
    p.add_argument("--name", help="run name under runs/predict (default: a timestamp)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from ..engine.predict import DETECTIONS_FILE, collect_images, predict_images
    from ..engine.trained import load_trained_model, model_and_weights
    from ..errors import UserError
    from ..utils.logs import append_log_line
    from ..utils.rundir import default_run_name, prepare_run_dir, write_run_config

    if not 0 <= args.score_thr <= 1:
        raise UserError(f"--score-thr must be in [0, 1], got {args.score_thr}")
    arch, weights = model_and_weights(args.model, args.weights, "predict")
    images = collect_images(args.images)
    model, meta, _ = load_trained_model(arch, weights, args.input_size)
    run = prepare_run_dir("predict", out=args.out, name=args.name, default_name=default_run_name("predict"))
    write_run_config(run.path, {"command": "predict", "arch": model.arch.to_dict(), "weights": weights,
                                "images": [str(p) for p in images], "score_thr": args.score_thr})
    records = predict_images(model, meta, images, run.path, score_thr=args.score_thr,
                             device=resolve_device(args.device))
    total = sum(len(r["detections"]) for r in records)
    append_log_line(run.path / "predict.log", f"{weights}: {total} detections in {len(records)} image(s) at "
                    f"score >= {args.score_thr}")
    print(f"{total} detections in {len(records)} image(s); wrote {run.path} ({DETECTIONS_FILE} and the drawn images)")
    return 0
