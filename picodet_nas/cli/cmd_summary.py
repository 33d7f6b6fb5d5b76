"""nas summary ARCH|CKPT [--input-size N] [--json] [--latency-table TABLE]"""

from __future__ import annotations

import argparse
import json

from ..arch import is_architecture


def register(sub) -> None:
    p = sub.add_parser(
        "summary",
        help="params, FLOPs, per-part breakdown and output shapes of an architecture",
        description="Print params (BN running statistics excluded), FLOPs (2 x multiply-adds, the "
        "published convention, counted with thop), the backbone/neck/head breakdown and output shapes.",
    )
    p.add_argument("arch", metavar="ARCH|CKPT", help="a preset (picodet-s, picodet-m, picodet-l), an architecture YAML "
                   "(e.g. best.yaml) or a checkpoint (its recorded architecture and classes)")
    p.add_argument("--input-size", type=int, help="override the architecture's input size (a multiple of 32)")
    p.add_argument("--num-classes", type=int, help="number of object classes (default: the checkpoint's, else 80)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--latency-table", metavar="TABLE",
                   help="a latency table (nas profile-device) to add predicted_latency_ms; the architecture must "
                        "lie in the table's space at one of its input sizes")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..arch import resolve_arch
    from ..summary import format_summary, summarize

    if is_architecture(args.arch):
        arch, num_classes = resolve_arch(args.arch, args.input_size), args.num_classes or 80
    else:
        from ..engine.trained import read_trained

        arch, meta, _ = read_trained(args.arch, input_size=args.input_size)
        num_classes = args.num_classes or meta["num_classes"]
    latency = None
    if args.latency_table:  # before the FLOP count, so that a wrong table fails fast
        from ..latency import LatencyPredictor

        predictor = LatencyPredictor.from_file(args.latency_table)
        predictor.check_num_classes(num_classes)
        latency = predictor.predict(arch)
    info = summarize(arch, num_classes=num_classes)
    if latency is not None:
        info["predicted_latency_ms"] = round(latency, 3)
        info["latency_table"] = args.latency_table
    print(json.dumps(info) if args.json else format_summary(info))
    return 0
