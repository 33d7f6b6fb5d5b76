"""nas import-paddle FILE.pdparams --arch ARCH [--input-size N] [--backbone-only] [--class-names A,B] --out model.pt"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "import-paddle",
        help="turn PaddleDetection's legacy PicoDet (or ESNet) weights into a model file",
        description="Read a PaddleDetection .pdparams file of the legacy PicoDet (ESNet backbone, CSP-PAN neck, "
        "PicoHead), or of an ESNet backbone alone (--backbone-only), and write its weights as a picodet-nas model "
        "file. Every tensor is mapped by name and shape; a tensor the architecture needs and the file lacks, one "
        "that maps onto nothing, or a shape that differs is refused, naming the tensor. The file is read without "
        "running any code it may contain. The written model evaluates, predicts and exports by itself (nas eval "
        "model.pt --data DIR), and starts trainings: nas retrain ARCH --init model.pt, nas train-supernet ... "
        "--init model.pt.",
    )
    p.add_argument("file", metavar="FILE.pdparams", help="PaddleDetection weights (e.g. picodet_s_320_coco.pdparams)")
    p.add_argument("--arch", required=True, metavar="ARCH",
                   help="the network the file holds: picodet-s, picodet-m, picodet-l or an architecture YAML")
    p.add_argument("--input-size", type=int,
                   help="the input size the model was trained at (default: the architecture's, e.g. 320 for "
                        "picodet-s; give 416 for picodet_s_416_coco)")
    p.add_argument("--backbone-only", action="store_true",
                   help="the file holds an ESNet backbone (or take only the backbone of a detector); the model file "
                        "then only starts trainings")
    p.add_argument("--class-names", metavar="NAME[,NAME...]",
                   help="the classes of a model not trained on COCO's 80 (default: COCO's)")
    p.add_argument("--ignore", action="append", default=[], metavar="PREFIX",
                   help="drop the file's tensors whose names start with PREFIX (e.g. an ImageNet classifier); "
                        "repeatable")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="the model file to write")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..arch import resolve_arch
    from ..paddle_import import check_out_path, import_paddle, write_imported

    check_out_path(args.out)
    arch = resolve_arch(args.arch, args.input_size)
    names = None if args.class_names is None else [n.strip() for n in args.class_names.split(",") if n.strip()]
    imported = import_paddle(args.file, arch, backbone_only=args.backbone_only, class_names=names,
                             ignore=args.ignore, arch_name=args.arch)
    out = write_imported(imported, args.out)
    meta = imported.meta
    what = ("backbone" if args.backbone_only else
            f"detector, {meta['num_classes']} classes, input {arch.input_size}")
    print(f"wrote {out}: {args.arch} {what}, {len(imported.state)} tensors from {args.file}")
    by_reason: dict[str, list[str]] = {}
    for key, why in imported.dropped.items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        print(f"  dropped {len(keys)} tensor{'s' if len(keys) > 1 else ''} ({why}): {keys[0]}"
              + (", ..." if len(keys) > 1 else ""))
    return 0
