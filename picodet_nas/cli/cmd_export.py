"""nas export ARCH [--weights CKPT] [--input-size N] [--no-postprocess] --out FILE.onnx"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export an architecture (and weights) to ONNX",
        description="Export to ONNX. With post-processing (default) the model outputs final boxes "
        "(xyxy, network-input pixels), scores and classes for one image; with --no-postprocess it "
        "outputs per-level sigmoid scores and raw box distributions, with a dynamic batch.",
    )
    p.add_argument("arch", help="a preset or an architecture YAML")
    p.add_argument("--weights", help="checkpoint to load (default: freshly initialised weights)")
    p.add_argument("--input-size", type=int, help="override the architecture's input size")
    p.add_argument("--num-classes", type=int, help="number of classes (default: from the checkpoint, else 80)")
    p.add_argument("--no-postprocess", action="store_true", help="export the raw per-level outputs")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..arch import resolve_arch
    from ..export import export_onnx
    from ..models import build_model

    arch = resolve_arch(args.arch, args.input_size)
    num_classes = args.num_classes or 80
    state = None
    if args.weights:
        from ..checkpoint import load_model_weights

        state, meta = load_model_weights(args.weights)
        num_classes = args.num_classes or meta.get("num_classes", num_classes)
    model = build_model(arch, num_classes)
    if state is not None:
        from ..checkpoint import apply_state

        apply_state(model, state, args.weights)
    path = export_onnx(model, args.out, input_size=arch.input_size, postprocess=not args.no_postprocess)
    print(f"wrote {path}")
    return 0
