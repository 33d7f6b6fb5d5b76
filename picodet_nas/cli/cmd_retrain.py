"""nas retrain ARCH --data DIR [-c CONFIG] [--epochs N] [--batch-size B] [--lr LR] [--resume [PATH]] ...

Also home of the training flags that `nas train-supernet` shares.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..arch import list_presets
from ..data.transforms import INTERPOLATION_MODES
from .config import add_config_flags, resolve

RESUME_HELP = ("continue a run exactly where its last.pt left it: without a value, the run named by --out/--name "
               "(or the latest run of this command); with a value, that run directory (or its last.pt)")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 160,192,224, got {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected at least one size, got {text!r}")
    return sizes


def add_training_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The recipe flags of both training commands. Every default is None: the published recipe
    of the model decides."""
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
    p.add_argument("--bn-freeze-epochs", type=int, metavar="N",
                   help="train the last N epochs with BN in eval mode, on its running statistics (default: 0); "
                        "with small batches (e.g. 8 on a CPU) this keeps the evaluated model from losing "
                        "accuracy to the difference between batch and running statistics")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the global gradient norm to NORM (default: 0, no clipping); use with "
                        "--bn-freeze-epochs, whose first steps can have large gradients")
    p.add_argument("--train-interp", choices=INTERPOLATION_MODES,
                   help="interpolation filter of the multi-scale resize: 'image' (drawn per image), 'batch' (one "
                        "per batch, as PaddleDetection) or one filter for every image (default: batch)")
    p.add_argument("--train-sizes", type=_sizes, metavar="S[,S...]",
                   help="the multi-scale training sizes (default: the input size +-64 px in steps of 32)")
    p.add_argument("--calib-images", type=int, metavar="N",
                   help="training images on which the evaluated weights get exact BN statistics, computed as eval "
                        "mode uses them, on the images augmented as in training and resized to the evaluation size "
                        "(default: 256; 0: keep the running statistics of training)")
    p.add_argument("--ema-buffers", action=argparse.BooleanOptionalAction, default=None,
                   help="average the BN running statistics in the EMA with the weights (default: on); off: the "
                        "EMA weights take the model's statistics")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on; faster than NCHW on a CPU)")
    p.add_argument("--workers", type=int,
                   help="data-loading worker processes (default: none on a CPU, where they would take cores from "
                        "the training threads; min(4, cores) on a GPU); does not change results")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun on GPUs, BN statistics over the global batch (SyncBatchNorm) instead of "
                        "each process's own batch; for small per-GPU batches (refused on a CPU)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic GPU kernels (torch, cuDNN, cuBLAS), so that --resume continues bit for bit "
                        "on a GPU as on a CPU; slower (see the README)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data order and augmentation (default: 0)")
    p.add_argument("--log-interval", type=int, metavar="N", help="write a log line every N steps (default: 20)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard scalars (losses, learning rate, mAP) into the run folder's "
                        "tensorboard/ (needs the optional extra: pip install \"picodet-nas[tensorboard]\")")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{command}/<name>)")
    p.add_argument("--name", help="run name under runs/" + command + " (default: the architecture and a timestamp)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH", help=RESUME_HELP)


TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "warmup_iters", "cosine_epochs", "eval_interval", "device", "amp",
                 "bn_freeze_epochs", "grad_clip", "train_interp", "train_sizes", "calib_images", "ema_buffers",
                 "channels_last", "workers", "seed", "log_interval", "tensorboard", "sync_bn", "deterministic")


def register(sub) -> None:
    p = sub.add_parser(
        "retrain",
        help="train an architecture with the full PicoDet recipe, evaluate and export it",
        description="Train a PicoDet architecture (a preset, an architecture YAML, or a search result's "
        "best.yaml) with the published recipe: SGD, warm-up and cosine LR, cycle-EMA, multi-scale training, "
        "from scratch, (--init supernet) from the weights it inherits from the search's supernet, or (--init "
        "MODEL.pt) from a model file such as nas import-paddle writes. Evaluates "
        "every --eval-interval epochs (best.pt), checkpoints every epoch (last.pt, resumable exactly), then writes "
        "model.pt (EMA weights), model.onnx and metrics.json. A search result's model is timed on this machine "
        "the way its latency table was measured (measured vs predicted latency, budget met or not). --sweep N "
        "first picks the learning rate and weight decay with a Ray Tune sweep. Multi-GPU or multi-process: "
        "launch with torchrun.",
    )
    p.add_argument("arch", nargs="?",
                   help=f"a preset ({', '.join(list_presets())}) or an architecture YAML (e.g. best.yaml); also "
                        "`retrain: arch:` in the -c file")
    p.add_argument("--input-size", type=int, help="train and evaluate at this input size (default: the architecture's)")
    add_training_flags(p, "retrain")
    p.add_argument("--init", metavar="scratch|supernet|MODEL.pt",
                   help="initial weights: scratch (default: the builder's initialisation), supernet (the weights "
                        "the architecture inherits from the supernet it was searched with) or a model file of the "
                        "same architecture, e.g. from nas import-paddle (fine-tuning: classes other than the "
                        "file's get a fresh classifier) or of its backbone alone")
    p.add_argument("--supernet", metavar="CKPT",
                   help="supernet checkpoint for --init supernet (default: the one best.yaml's provenance names); "
                        "it must be of the space best.yaml was searched in")
    p.add_argument("--measure-latency", action=argparse.BooleanOptionalAction, default=None,
                   help="time the exported network with ONNX Runtime on this machine for metrics.json, with the "
                        "settings of the latency table the search used (default: on for a search result that "
                        "names its latency table, off otherwise)")
    p.add_argument("--export-int8", action="store_true", default=None,
                   help="also write model.int8.onnx: the network statically quantized (ONNX Runtime, QDQ, int8 "
                        "weights per channel) with activation ranges from training images; metrics.json gets its "
                        "mAP beside the float one and, when latency is measured, its measured latency")
    p.add_argument("--int8-calib-images", type=int, metavar="N",
                   help="training images that calibrate the INT8 activation ranges (default: 32)")
    sweep = p.add_argument_group("hyper-parameter sweep (Ray Tune: Optuna search, ASHA early stopping)")
    sweep.add_argument("--sweep", type=int, metavar="N",
                       help="first run N trials over the learning rate and weight decay (log-uniform within a factor "
                            "4 of the recipe's), stopping weak trials early, then train with the best values (or keep "
                            "the best trial's model when it already ran the final schedule); writes sweep.csv")
    sweep.add_argument("--sweep-epochs", metavar="E[,E...]",
                       help="epochs of each trial, a complete shorter schedule (default: --epochs); several values: "
                            "search the epochs among them too")
    sweep.add_argument("--sweep-threads", type=int, metavar="T",
                       help="PyTorch threads (and Ray CPUs) per trial (default: 1)")
    sweep.add_argument("--address",
                       help="Ray cluster to join for the trials ('auto' or host:port; default: the RAY_ADDRESS "
                            "environment variable, else a local Ray instance without dashboard); every node needs "
                            "the data and the run directory at the same path")
    add_config_flags(p, "retrain", shared=("seed", "data"), required=("arch", "data"))
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.retrain import retrain
    from ..latency.anchors import describe, drift_note

    values = resolve(args)
    options = {k: values[k] for k in (*TRAIN_OPTIONS, "input_size")}
    arch = values["arch"]
    metrics = retrain(arch, values["data"], options=options, out=values.get("out"), name=values.get("name"),
                      resume=args.resume, measure_latency=values.get("measure_latency"),
                      init=initial_weights(values, arch), sweep=_sweep_settings(values),
                      export_int8=_int8_calib(values))
    if metrics is not None:
        coco = metrics["coco"]
        line = (f"mAP {coco['mAP']:.4f}  mAP50 {coco['mAP50']:.4f}  params {metrics['params']}  "
                f"FLOPs {metrics['flops'] / 1e9:.3f}G  epochs {metrics['epochs']}  {metrics['wall_time_s']:.0f} s")
        if "measured_latency_ms" in metrics:
            line += f"  latency {metrics['measured_latency_ms']:.3f} ms measured"
            if "predicted_latency_ms" in metrics:
                line += f" / {metrics['predicted_latency_ms']:.3f} predicted"
            if "budget_met" in metrics:
                line += f" (budget {metrics['latency_budget_ms']:g} ms {'met' if metrics['budget_met'] else 'MISSED'})"
            line += describe(metrics)
            if metrics.get("latency_measurement", {}).get("same_cpu_model") is False:
                line += "; the latency table was measured on another CPU"
        if "int8" in metrics:
            q = metrics["int8"]
            line += f"\nINT8 ({q['file']}): mAP {q['coco']['mAP']:.4f} ({-q['mAP_drop']:+.4f} against float)"
            if "measured_latency_ms" in q:
                line += f"  latency {q['measured_latency_ms']:.3f} ms measured"
                if "predicted_latency_ms" in q:
                    line += f" / {q['predicted_latency_ms']:.3f} predicted"
                line += describe(q)
        print(line)
        drift = drift_note(metrics)
        if drift:
            print(f"note: {drift}")
    return 0


def _int8_calib(values: dict[str, Any]) -> int | None:
    """The INT8 calibration image count when --export-int8 is given, else None."""
    from ..engine.int8_export import DEFAULT_INT8_CALIB_IMAGES
    from ..errors import UserError

    count = values.get("int8_calib_images")
    if not values.get("export_int8"):
        if count is not None:
            raise UserError("--int8-calib-images calibrates --export-int8; add --export-int8 or leave it out")
        return None
    if count is not None and count < 1:
        raise UserError(f"--int8-calib-images must be at least 1, got {count}")
    return count or DEFAULT_INT8_CALIB_IMAGES


def initial_weights(values: dict[str, Any], arch_spec: str):
    """`--init supernet`: the weights the architecture inherits from the supernet (the command
    line is the one place that may use the supernet package), checked against best.yaml's space;
    `--init MODEL.pt`: a model file's weights (`engine.pretrained`)."""
    from ..errors import UserError

    init = values.get("init") or "scratch"
    if init != "supernet" and values.get("supernet"):
        raise UserError("--supernet gives the weights of --init supernet; add --init supernet or leave it out")
    if init == "scratch":
        return None
    if init != "supernet":
        return pretrained_init(init)
    from supernet.inherit import inherited_weights

    from ..arch import resolve_arch
    from ..data.classes import Classes
    from ..engine.pretrained import InitialWeights
    from ..engine.search_result import read_search_result

    arch = resolve_arch(arch_spec, values.get("input_size"))
    search = read_search_result(arch_spec)
    path = values.get("supernet") or (search.supernet if search is not None else None)
    if path is None:
        raise UserError(f"--init supernet: {arch_spec} names no supernet (provenance.supernet); pass --supernet CKPT")
    fingerprint = search.space.get("fingerprint") if search is not None else None
    state, meta = inherited_weights(path, arch, space_fingerprint=fingerprint, arch_source=str(arch_spec))
    return InitialWeights(state, str(path), Classes.of_checkpoint(meta, path))


def read_init_file(value: str, expected: str = "a model file (.pt)"):
    """The model file of `--init MODEL.pt` (`engine.pretrained.read_pretrained`)."""
    from pathlib import Path

    from ..engine.pretrained import read_pretrained
    from ..errors import UserError

    if not Path(value).is_file():
        raise UserError(f"--init {value}: expected {expected}, and there is no such file")
    return read_pretrained(value)


def pretrained_init(value: str):
    from ..engine.pretrained import InitialWeights

    pre = read_init_file(value, "scratch, supernet or a model file (.pt)")
    return InitialWeights({}, str(pre.path), kind="pretrained", pretrained=pre)


def _sweep_settings(values: dict[str, Any]):
    from ..errors import UserError

    if values.get("sweep") is None:
        given = [f"--{k.replace('_', '-')}" for k in ("sweep_epochs", "sweep_threads", "address") if values.get(k)]
        if given:
            raise UserError(f"{given[0]} applies to a sweep; add --sweep N")
        return None
    from ..engine.sweep_settings import SweepSettings, parse_epochs

    epochs = values.get("sweep_epochs")
    return SweepSettings(trials=values["sweep"], epochs=parse_epochs(epochs) if epochs is not None else None,
                         threads_per_trial=values.get("sweep_threads") or 1, address=values.get("address"))
