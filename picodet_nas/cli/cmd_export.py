"""nas export CKPT|ARCH [--weights CKPT] [--input-size N] [--no-postprocess] --out FILE.onnx"""

from __future__ import annotations

import argparse

from ..arch import is_architecture


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export an architecture (and weights) to ONNX",
        description="Export to ONNX. With post-processing (default) the model outputs final boxes "
        "(xyxy, network-input pixels; original-image pixels with --original-size), scores and classes for one "
        "image; with --no-postprocess it outputs per-level sigmoid scores and raw box distributions, with a "
        "dynamic batch. The file's metadata properties hold the class names, category ids, input size, "
        "preprocessing and thresholds (examples/onnx_predict.py reads them).",
    )
    p.add_argument("model", metavar="CKPT|ARCH", help="a checkpoint (it records its architecture, classes and input "
                   "size), or an architecture (a preset or a YAML) for freshly initialised weights")
    p.add_argument("--weights", help="with an ARCH: the checkpoint to load, checked against ARCH")
    p.add_argument("--input-size", type=int, help="input size (default: the checkpoint's, else the architecture's)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: from the checkpoint, else 80)")
    p.add_argument("--no-postprocess", action="store_true", help="export the raw per-level outputs")
    p.add_argument("--original-size", action="store_true",
                   help="add a scale_factor input [1, 2] = (input / image height, input / image width), "
                        "PaddleDetection's convention, so that boxes come back in original-image pixels")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..arch import resolve_arch
    from ..errors import UserError
    from ..export import export_onnx
    from ..models import build_model

    if args.original_size and args.no_postprocess:
        raise UserError("--original-size needs the post-processing (drop --no-postprocess)")
    meta = None
    if args.weights or not is_architecture(args.model):
        from ..engine.trained import load_trained_model

        model, meta, _ = load_trained_model(args.model if args.weights else None, args.weights or args.model,
                                            args.input_size)
        if args.num_classes and args.num_classes != meta["num_classes"]:
            raise UserError(f"--num-classes {args.num_classes}: the checkpoint predicts {meta['num_classes']} classes")
    else:
        model = build_model(resolve_arch(args.model, args.input_size), args.num_classes or 80)
    path = export_onnx(model, args.out, input_size=model.arch.input_size, postprocess=not args.no_postprocess,
                       original_size=args.original_size, meta=meta)
    print(f"wrote {path}")
    return 0
