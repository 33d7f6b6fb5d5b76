"""The files a finished retrain leaves for its users: `model.pt` (the final weights and what is
needed to use them: architecture, classes, category ids), `model.onnx` (with post-processing:
image in, detections out) and `metrics.json` (`coco`, `params`, `flops`, `epochs`,
`wall_time_s`...), written last: its presence marks a complete run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..arch import Arch
from ..checkpoint import apply_state, save_checkpoint
from ..models import build_model
from ..utils.io import atomic_write_json

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
METRICS_FILE = "metrics.json"


def finalize(run_dir: Path, arch: Arch, meta: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
             coco: Mapping[str, float], *, epochs: int, wall_time_s: float, best: Mapping[str, Any] | None,
             extra: Mapping[str, Any], latency: Mapping[str, Any] | None,
             int8: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """model.pt, model.onnx and metrics.json; returns the content of metrics.json.

    extra:   more fields of metrics.json (the search's latency figures among them).
    latency: `measure.latency_plan`'s answer; the network is then timed (`measure.latency_metrics`).
    int8:    {"train_set", "val_set", "calib_images"}: also model.int8.onnx, evaluated (and timed
             with `latency`) into metrics.json's `int8` section (`int8_export`), all before
             metrics.json, whose presence marks a complete run.
    """
    from ..export import export_onnx
    from ..summary import summarize

    save_checkpoint(run_dir / MODEL_FILE, weights, meta, epoch=epochs, metrics=dict(coco))
    model = build_model(arch, meta["num_classes"])
    apply_state(model, weights, run_dir / MODEL_FILE)
    export_onnx(model, run_dir / ONNX_FILE, input_size=arch.input_size, postprocess=True, meta=meta)
    info = summarize(arch, num_classes=meta["num_classes"], model=model)
    metrics: dict[str, Any] = {"coco": dict(coco), "params": info["params"], "flops": info["flops"],
                               "epochs": epochs, "wall_time_s": round(wall_time_s, 3),
                               "input_size": arch.input_size, "arch": arch.to_dict(), "best": best, **extra}
    if latency is not None:
        from .measure import latency_metrics

        metrics.update(latency_metrics(arch, meta["num_classes"], latency, metrics))
    if int8 is not None:
        from .int8_export import export_int8, int8_metrics

        path = export_int8(model, arch.input_size, int8["train_set"], run_dir, int8["calib_images"])
        metrics["int8"] = int8_metrics(path, meta["num_classes"], int8["val_set"], arch.input_size, coco,
                                       int8["calib_images"], latency, metrics)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics
