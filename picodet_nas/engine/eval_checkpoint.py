"""`nas eval`: the COCO numbers of a trained checkpoint on a dataset's validation split, written
to `metrics.json` of an eval run directory (the same numbers a retrain of these weights
reported, with the same batch size), plus one line in `eval.log`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..arch import Arch
from ..data import resolve_data
from ..data.classes import Classes, label_mapping
from ..utils.io import atomic_write_json
from ..utils.logs import append_log_line
from ..utils.rundir import default_run_name, prepare_run_dir, write_run_config
from .config import data_workers
from .distributed import resolve_device
from .evaluate import EVAL_BATCH_SIZE, evaluate_coco
from .finalize import METRICS_FILE
from .session import load_split
from .trained import load_trained_model, resize_filter


def evaluate_checkpoint(arch_spec: str | Path | Arch | None, weights: str | Path, data: str | Path, *,
                        out: str | None = None, name: str | None = None, input_size: int | None = None,
                        batch_size: int = EVAL_BATCH_SIZE, workers: int | None = None, device: str = "auto"
                        ) -> dict[str, Any]:
    """COCO numbers of a checkpoint on the validation split; returns `metrics.json`'s content
    and `run_dir`. arch_spec None: the architecture the checkpoint records, at the input size it
    was trained at."""
    dev = torch.device(resolve_device(device))
    model, meta, ckpt = load_trained_model(arch_spec, weights, input_size)
    paths = resolve_data(data)
    dataset = load_split(paths.val_ann, paths.val_images)
    mapping = label_mapping(Classes.of_checkpoint(meta, weights), Classes.of_dataset(dataset))
    stem = Path(str(weights)).parent.name or "model"
    run = prepare_run_dir("eval", out=out, name=name, default_name=default_run_name(stem))
    t0 = time.perf_counter()
    coco = evaluate_coco(model.to(dev), dataset, model.arch.input_size, device=dev, batch_size=batch_size,
                         workers=data_workers(workers, dev), label_to_cat_id=mapping, progress=True,
                         resize_filter=resize_filter(meta))
    from ..summary import summarize

    info = summarize(model.arch, num_classes=meta["num_classes"], model=model.cpu())
    metrics = {"coco": coco, "params": info["params"], "flops": info["flops"], "epochs": ckpt.get("epoch"),
               "wall_time_s": round(time.perf_counter() - t0, 3), "input_size": model.arch.input_size,
               "arch": model.arch.to_dict(), "weights": str(weights), "data": str(paths.val_ann),
               "images": len(dataset)}
    write_run_config(run.path, {"command": "eval", "arch": model.arch.to_dict(), "weights": str(weights),
                                "data": str(paths.val_ann), "images": str(paths.val_images), "batch_size": batch_size,
                                "device": str(dev)})
    atomic_write_json(run.path / METRICS_FILE, metrics)
    append_log_line(run.path / "eval.log", f"{weights} on {paths.val_ann} ({len(dataset)} images): "
                    + " ".join(f"{k} {v:.4f}" for k, v in coco.items()))
    metrics["run_dir"] = str(run.path)
    return metrics
