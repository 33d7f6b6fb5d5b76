"""`nas retrain --export-int8`: the retrained network as a statically quantized INT8 model.

`model.int8.onnx` is the deployed form the latency tables time (raw per-level outputs, batch
1, no post-processing: NMS runs outside, as Paddle Lite and NCNN deployments of PicoDet do),
quantized by `latency.int8.quantize_onnx` with activation ranges calibrated on real training
images (eval preprocessing). Its mAP comes from the one evaluation path of every reported
number (`evaluate_coco`): `OnnxPicoDet` runs the file with ONNX Runtime and hands the outputs
to the same post-processing and pycocotools evaluation as the float model, so the two mAPs
differ only by what quantization changed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..data import CocoDetection, build_eval_loader, normalize
from ..models.detector import STRIDES, flatten_outputs

INT8_FILE = "model.int8.onnx"
DEFAULT_INT8_CALIB_IMAGES = 32
_EPS = 1e-7  # scores are clipped to [eps, 1 - eps] before the inverse sigmoid


class OnnxPicoDet(nn.Module):
    """A raw-output ONNX export (`DeployModel`'s layout, batch 1) run by ONNX Runtime, with the
    interface `engine.evaluate.detect` uses: forward gives per-level [B, C + 32, H, W] maps (class
    logits recovered from the exported sigmoid scores), `flatten` the flattened tensors."""

    def __init__(self, path: str | Path, num_classes: int, threads: int | None = None, strides=STRIDES):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.num_classes, self.strides = num_classes, tuple(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        images = x.detach().float().cpu().numpy()
        per_image = [self.session.run(None, {self.input_name: images[i:i + 1]}) for i in range(len(images))]
        levels = []
        height, width = images.shape[-2:]
        for level, stride in enumerate(self.strides):
            scores = np.concatenate([o[2 * level] for o in per_image])  # [B, HW, C]
            dists = np.concatenate([o[2 * level + 1] for o in per_image])  # [B, HW, 32]
            p = np.clip(scores, _EPS, 1 - _EPS)
            flat = np.concatenate([np.log(p) - np.log1p(-p), dists], axis=-1)
            h, w = math.ceil(height / stride), math.ceil(width / stride)
            if h * w != flat.shape[1]:
                raise ValueError(f"output {2 * level} holds {flat.shape[1]} positions, not {h} x {w} at stride {stride}")
            levels.append(torch.from_numpy(flat).transpose(1, 2).reshape(len(images), -1, h, w))
        return levels

    def flatten(self, outs: list[torch.Tensor]):
        return flatten_outputs(outs, self.num_classes, self.strides)


def calibration_feeds(train_set: CocoDetection, input_size: int, count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` training images, preprocessed as for evaluation, one feed each."""
    feeds = []
    for images, _ in build_eval_loader(train_set, input_size, 1, 0, uint8=True):
        feeds.append({"image": normalize(images).numpy()})
        if len(feeds) >= count:
            break
    return feeds


def export_int8(model: nn.Module, input_size: int, train_set: CocoDetection, run_dir: Path,
                calib_images: int = DEFAULT_INT8_CALIB_IMAGES) -> Path:
    """Write `run_dir / model.int8.onnx`: `model` (eval mode, its final BN statistics) exported
    raw at batch 1 and quantized with ranges from `calib_images` training images."""
    import tempfile

    from ..export import export_onnx
    from ..latency.int8 import quantize_onnx

    with tempfile.TemporaryDirectory(prefix="nas-int8-", dir=run_dir) as d:
        float_path = export_onnx(model, Path(d) / "float.onnx", input_size=input_size, dynamic_batch=False)
        return quantize_onnx(float_path, run_dir / INT8_FILE, calibration_feeds(train_set, input_size, calib_images))


def int8_metrics(path: Path, num_classes: int, val_set: CocoDetection, input_size: int, float_coco: Mapping[str, float],
                 calib_images: int, latency: Mapping[str, Any] | None, figures: Mapping[str, float]) -> dict[str, Any]:
    """The `int8` section of metrics.json: the INT8 model's COCO numbers beside the float ones,
    and (when the run measures latency) its measured latency, compared with the search's
    prediction only when the search's table timed INT8 models."""
    from .evaluate import evaluate_coco

    coco = evaluate_coco(OnnxPicoDet(path, num_classes), val_set, input_size)
    out: dict[str, Any] = {"file": INT8_FILE, "calib_images": calib_images, "coco": coco,
                           "mAP_drop": round(float_coco["mAP"] - coco["mAP"], 4)}
    if latency is not None:
        from ..latency.profiler import measure_onnx
        from .measure import measurement_fields, plan_anchors

        timing = dict(latency["timing"])
        int8_table = timing.pop("precision", "fp32") == "int8"
        predicted = figures.get("predicted_latency_ms") if int8_table else None
        # anchors only from an INT8 table: a float table's subnets say nothing about INT8 speed
        stats = measure_onnx(path, precision="int8", **timing, **(plan_anchors(latency, predicted) if int8_table else {}))
        fields = measurement_fields(stats, predicted, None, {"precision": "int8"})
        out.update(fields)
        if predicted:
            out["predicted_latency_ms"] = predicted
    return out
