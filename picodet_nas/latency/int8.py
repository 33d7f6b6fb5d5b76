"""Static INT8 quantization of exported ONNX models, with ONNX Runtime's own tools.

`quantize_onnx` pre-processes a float32 ONNX file as ONNX Runtime advises (shape inference
and graph optimisation, which folds the exporter's bias constants into initializers; without
it the convolutions keep float biases and the model ran 3.4x slower than the float one here)
and turns it into a QDQ model (QuantizeLinear / DequantizeLinear
pairs that ONNX Runtime fuses into integer kernels): weights int8 per output channel,
activations uint8 per tensor (the U8S8 pairing ONNX Runtime recommends on x86 and ARM CPUs),
ranges calibrated by min/max on the given input batches. Paddle Lite and NCNN deploy PicoDet's
INT8 models with the same scheme (per-channel int8 weights, per-tensor activations).

For latency tables the calibration batches are random: the cost of an integer kernel does not
depend on the values or the scales, only on the shapes. For a trained model (`nas retrain
--export-int8`) they are real training images, since there the ranges decide the accuracy.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

PRECISIONS = ("fp32", "int8")


def check_precision(precision: str, flag: str = "--precision") -> None:
    from ..errors import LatencyTableError

    if precision not in PRECISIONS:
        raise LatencyTableError(f"{flag} must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def random_batches(path: str | Path, count: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` feeds of standard-normal inputs of the model's (static) input shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    return [{i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
            for _ in range(count)]


def quantize_onnx(src: str | Path, dst: str | Path, batches: Iterable[Mapping[str, np.ndarray]]) -> Path:
    """Write the static INT8 (QDQ) version of the float model `src` to `dst`, calibrated on
    `batches` (feeds: input name -> array). `src` and `dst` may be the same file."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self._it = iter(list(feeds))

        def get_next(self):
            return next(self._it, None)

    import logging

    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises on the root logger, once per tensor
    try:
        with tempfile.TemporaryDirectory(prefix="nas-int8-", dir=dst.parent) as d:
            pre, out = Path(d) / "pre.onnx", Path(d) / "int8.onnx"
            quant_pre_process(str(src), str(pre))
            quantize_static(str(pre), str(out), Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            os.replace(out, dst)
    finally:
        root.setLevel(level)
    return dst
