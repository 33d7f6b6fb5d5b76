"""`nas predict`: detections on image files, drawn (boxes, class names, scores) and as JSON.

Images go through the evaluation preprocessing (straight resize, bicubic) and the evaluation
post-processing with a display score threshold (0.4 by default, as PaddleDetection's deploy
demo), so the boxes are those mAP was measured on, minus the low-confidence ones.
"""

from __future__ import annotations

import colorsys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ..data import eval_resize, normalize
from ..data.classes import class_names_of
from ..data.coco import _to_rgb
from ..data.transforms import to_nchw
from ..errors import DataError
from ..postprocess import EVAL_NMS
from ..utils.io import atomic_write_json
from .evaluate import detect
from .trained import resize_filter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DETECTIONS_FILE = "detections.json"


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named, and the image files inside named folders (sorted); a missing path
    or an empty folder is an error before any work."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"image file not found: {path}")
    return files


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return _to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image file {path}: {e}") from None


def _color(label: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections: list[dict[str, Any]]) -> Image.Image:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(image.shape[:2]) / 320))
    for det in detections:
        x0, y0, x1, y1 = det["bbox"]
        color = _color(det["label"])
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        text = f"{det['class_name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        lift = bottom - top + 2
        ty = y0 - lift if y0 - lift >= 0 else y0
        draw.rectangle((x0, ty, x0 + right - left + 4, ty + lift), fill=color)
        draw.text((x0 + 2, ty + 1 - (top - y0)), text, fill=(0, 0, 0), font=font)
    return canvas


@torch.no_grad()
def predict_images(model: torch.nn.Module, meta: dict[str, Any], images: Sequence[Path], out_dir: Path, *,
                   score_thr: float = 0.4, device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Detect on every image, write `<out_dir>/<name>.png` with the boxes drawn and
    `<out_dir>/detections.json`; returns the JSON's records."""
    device = torch.device(device)
    model = model.to(device).eval()
    size = model.arch.input_size
    names = class_names_of(meta, model.num_classes)
    cat_ids = list(meta.get("label_to_cat_id") or range(model.num_classes))
    nms = replace(EVAL_NMS, score_thr=score_thr)
    records, used = [], set()
    for path in images:
        image = read_image(path)
        resized, scale = eval_resize(image, size, resize_filter(meta))
        batch = normalize(to_nchw([resized])).to(device)
        boxes, scores, labels = detect(model, batch, torch.tensor([scale], dtype=torch.float32, device=device),
                                       nms=nms)[0]
        dets = [{"bbox": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label),
                 "category_id": int(cat_ids[int(label)]), "class_name": names[int(label)]}
                for box, score, label in zip(boxes.cpu().tolist(), scores.cpu().tolist(), labels.cpu().tolist())]
        stem = path.stem
        n = 2
        while stem in used:  # two inputs with the same file name from different folders
            stem, n = f"{path.stem}-{n}", n + 1
        used.add(stem)
        drawn = out_dir / f"{stem}.png"
        draw_detections(image, dets).save(drawn)
        records.append({"image": str(path), "output": str(drawn), "width": int(image.shape[1]),
                        "height": int(image.shape[0]), "detections": dets})
    atomic_write_json(out_dir / DETECTIONS_FILE, {"score_threshold": score_thr, "images": records})
    return records
