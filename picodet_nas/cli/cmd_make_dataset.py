"""nas make-dataset shapes --out DIR [--train N] [--val M] [--image-size S] [--seed K] [-c CONFIG]"""

from __future__ import annotations

import argparse

from .config import add_config_flags, resolve


def register(sub) -> None:
    p = sub.add_parser(
        "make-dataset",
        help="write a synthetic COCO-format detection dataset",
        description="Write a synthetic detection dataset in the simple COCO layout "
        "(annotations/instances_{train,val}.json, images/). 'shapes': six shape classes (non-contiguous "
        "category ids) with random colour, pose and occlusion on cluttered backgrounds; the same arguments "
        "always give byte-identical files.",
    )
    p.add_argument("kind", choices=("shapes",), help="the generator (only 'shapes')")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--train", type=int, default=1500, help="training images (default: 1500)")
    p.add_argument("--val", type=int, default=200, help="validation images (default: 200)")
    p.add_argument("--image-size", type=int, default=320, help="square image side in pixels (default: 320)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_config_flags(p, "dataset", shared=("seed",), exclude=("kind", "overwrite"))
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data import make_shapes_dataset

    v = resolve(args)
    out = make_shapes_dataset(v["out"], train=v["train"], val=v["val"], image_size=v["image_size"], seed=v["seed"],
                              overwrite=args.overwrite)
    print(f"wrote {out}: {v['train']} training and {v['val']} validation images of {v['image_size']} px")
    return 0
