"""nas retrain ARCH --data DIR [-c CONFIG] [--epochs N] [--batch-size B] [--lr LR] [--resume [PATH]] ...

Also home of the training flags and the `-c CONFIG` merge that `nas train-supernet` shares.
"""

from __future__ import annotations

import argparse
from typing import Any

RESUME_HELP = ("continue a run exactly where its last.pt left it: without a value, the run named by --out/--name "
               "(or the latest run of this command); with a value, that run directory (or its last.pt)")


def add_training_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The recipe flags of both training commands. Every default is None, meaning 'the published
    recipe' (or the config file's value), so that explicitly given flags can be told apart."""
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="a flat YAML file of these options (e.g. 'epochs: 20' or 'batch-size: 16'); flags given "
                        "on the command line override it; an unknown key is an error")
    p.add_argument("--data", metavar="DIR",
                   help="COCO-format dataset: the COCO 2017 layout (annotations/instances_{train,val}2017.json, "
                        "train2017/, val2017/) or the simple one (annotations/instances_{train,val}.json, images/)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: 300; 250 for L-size models)")
    p.add_argument("--batch-size", type=int,
                   help="images per step per process (default: the published per-GPU batch, 128 for S/M at 320)")
    p.add_argument("--lr", type=float,
                   help="peak learning rate after warm-up (default: 0.4 at a global batch of 512, 0.3 at 256 for "
                        "L, scaled linearly with batch size x processes)")
    p.add_argument("--warmup-iters", type=int, help="linear warm-up iterations from 0.1x the LR (default: 300)")
    p.add_argument("--cosine-epochs", type=int,
                   help="cosine horizon in epochs (default: --epochs when given, else the published 300)")
    p.add_argument("--eval-interval", type=int, metavar="N",
                   help="evaluate every N epochs, and always after the last (default: 10)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where to train (default: auto, a GPU when one is visible); under torchrun each process "
                        "uses the GPU of its LOCAL_RANK")
    p.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"),
                   help="mixed precision (default: auto, bf16 or fp16 on a GPU, none on a CPU)")
    p.add_argument("--workers", type=int, help="data-loading worker processes (default: 2); does not change results")
    p.add_argument("--seed", type=int, help="seed of initialisation, data order and augmentation (default: 0)")
    p.add_argument("--log-interval", type=int, metavar="N", help="write a log line every N steps (default: 20)")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{command}/<name>)")
    p.add_argument("--name", help="run name under runs/" + command + " (default: the architecture and a timestamp)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH", help=RESUME_HELP)


TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "warmup_iters", "cosine_epochs", "eval_interval", "device", "amp",
                 "workers", "seed", "log_interval")


def merged_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The command's options: the config file's values, overridden by the flags given.

    Config values are converted and checked like the flags themselves (so `lr: 1e-3`, which
    YAML reads as a string, still works, and `device: tpu` is refused naming the key).
    """
    from ..engine.config import load_flat_config
    from ..errors import UserError

    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "resume")}
    values: dict[str, Any] = {}
    if args.config:
        for key, value in load_flat_config(args.config, actions).items():
            action = actions[key]
            if isinstance(value, str) and action.type is not None:
                try:
                    value = action.type(value)
                except (TypeError, ValueError):
                    raise UserError(f"{args.config}: {key}: invalid value {value!r}") from None
            if action.choices is not None and value not in action.choices:
                raise UserError(f"{args.config}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
            values[key] = value
    for key in actions:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


def register(sub) -> None:
    p = sub.add_parser(
        "retrain",
        help="train an architecture with the full PicoDet recipe, evaluate and export it",
        description="Train a PicoDet architecture (a preset, an architecture YAML, or a search result's "
        "best.yaml) from scratch with the published recipe: SGD, warm-up and cosine LR, cycle-EMA, "
        "multi-scale training. Evaluates every --eval-interval epochs (best.pt), checkpoints every epoch "
        "(last.pt, resumable exactly), then writes model.pt (EMA weights), model.onnx and metrics.json. "
        "Multi-GPU or multi-process: launch with torchrun.",
    )
    p.add_argument("arch", help="a preset (picodet-s, picodet-m, picodet-l) or an architecture YAML (e.g. best.yaml)")
    p.add_argument("--input-size", type=int, help="train and evaluate at this input size (default: the architecture's)")
    add_training_flags(p, "retrain")
    p.add_argument("--measure-latency", action="store_true", default=None,
                   help="time the exported network with ONNX Runtime on this machine for metrics.json")
    p.set_defaults(handler=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from ..engine.retrain import retrain
    from ..errors import UserError

    values = merged_options(args.parser, args)
    if not values.get("data"):
        raise UserError("--data DIR is required (a COCO-format dataset)")
    options = {k: values[k] for k in (*TRAIN_OPTIONS, "input_size") if k in values}
    metrics = retrain(values.get("arch", args.arch), values["data"], options=options, out=values.get("out"),
                      name=values.get("name"), resume=args.resume,
                      measure_latency=bool(values.get("measure_latency")))
    if metrics is not None:
        coco = metrics["coco"]
        print(f"mAP {coco['mAP']:.4f}  mAP50 {coco['mAP50']:.4f}  params {metrics['params']}  "
              f"FLOPs {metrics['flops'] / 1e9:.3f}G  epochs {metrics['epochs']}  {metrics['wall_time_s']:.0f} s")
    return 0
