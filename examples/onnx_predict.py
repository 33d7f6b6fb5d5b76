"""Run an exported picodet-nas model on images with numpy, Pillow and ONNX Runtime alone (and
OpenCV for a model imported from PaddleDetection, whose preprocessing resizes with it).

Everything the model needs is read from the ONNX file's metadata (written by `nas export` and
`nas retrain`): the input size, the preprocessing, the class names and dataset category ids.
Models exported with `--original-size` take a `scale_factor` input and return boxes in
original-image pixels; for the others the boxes are mapped back here (NMS then ran on the
network-input boxes, which for a non-square image can keep or drop a box differently).

    python examples/onnx_predict.py model.onnx image.jpg [more.jpg ...] [--score-thr 0.4]

Prints one JSON document: per image, its detections (bbox xyxy in original pixels, score,
label, category_id, class_name).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image


def load(path: str) -> tuple[ort.InferenceSession, dict]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    if meta.get("producer") != "picodet-nas":
        raise SystemExit(f"{path}: not a picodet-nas export (no metadata)")
    return session, meta


def preprocess(path: str, meta: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as the network's input [1, 3, S, S] float32, and its original (height, width)."""
    size, pre = meta["input_size"], meta["preprocessing"]
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    width, height = rgb.size
    if pre.get("resize_filter") == "opencv":  # a model imported from PaddleDetection: OpenCV's bicubic
        import cv2

        resized = cv2.resize(np.asarray(rgb), (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    else:
        resized = np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    x = (resized * pre["scale"] - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32), (height, width)


def predict(session: ort.InferenceSession, meta: dict, path: str, score_thr: float) -> list[dict]:
    x, (height, width) = preprocess(path, meta)
    size = meta["input_size"]
    scale = np.array([[size / height, size / width]], np.float32)  # (y, x): PaddleDetection's order
    feeds = {"image": x}
    in_original = "scale_factor" in {i.name for i in session.get_inputs()}
    if in_original:
        feeds["scale_factor"] = scale
    boxes, scores, classes = session.run(["boxes", "scores", "classes"], feeds)
    if not in_original:
        boxes = boxes / np.array([scale[0, 1], scale[0, 0], scale[0, 1], scale[0, 0]], np.float32)
    keep = scores >= score_thr
    return [{"bbox": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label),
             "category_id": int(meta["category_ids"][label]), "class_name": meta["class_names"][label]}
            for box, score, label in zip(boxes[keep], scores[keep], classes[keep])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an ONNX file exported by picodet-nas with post-processing")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--score-thr", type=float, default=0.4, help="keep detections scoring at least this")
    args = ap.parse_args()
    session, meta = load(args.model)
    print(json.dumps({"images": [{"image": p, "detections": predict(session, meta, p, args.score_thr)}
                                 for p in args.images]}, indent=1))


if __name__ == "__main__":
    main()
