"""A COCO-format detection dataset, read with pycocotools and validated up front.

Bad input is reported as a one-line `DataError` that names the file and what was
expected, before any training starts; slightly bad boxes (zero size, outside the
image) are repaired or dropped with one summary warning per file, because real
datasets routinely contain a few of them and stopping a run over them helps nobody.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from picodet_nas.errors import DataError
from picodet_nas.utils.values import is_int, is_number

REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _read_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {ann_file} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except UnicodeDecodeError:
        raise DataError(f"annotation file {ann_file} is not valid JSON: not UTF-8 text")
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {ann_file}: expected a JSON object with 'images', 'annotations', 'categories'"
        )
    return data


def _validate(data: dict, ann_file: Path) -> None:
    """Check the structure pycocotools and this package rely on, naming the first offending entry."""
    where = f"annotation file {ann_file}"
    for section, keys in REQUIRED_KEYS.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise DataError(f"{where}: missing '{section}' list (COCO detection format)")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DataError(f"{where}: {section}[{i}] is not a JSON object")
            for key in keys:
                if key not in entry:
                    raise DataError(f"{where}: {section}[{i}] lacks required key '{key}'")
            if not is_int(entry["id"]):
                raise DataError(f"{where}: {section}[{i}].id must be an integer, got {entry['id']!r}")
    if not data["categories"]:
        raise DataError(f"{where}: 'categories' is empty; expected at least one category")
    if not data["images"]:
        raise DataError(f"{where}: 'images' is empty; expected at least one image")

    for section in REQUIRED_KEYS:  # duplicate ids make pycocotools silently drop or repeat entries
        ids = [entry["id"] for entry in data[section]]
        if len(set(ids)) != len(ids):
            raise DataError(f"{where}: '{section}' has duplicate ids")
    for i, img in enumerate(data["images"]):
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DataError(f"{where}: images[{i}].file_name must be a non-empty string")
        for key in ("width", "height"):
            if not is_number(img[key]) or img[key] <= 0:
                raise DataError(f"{where}: images[{i}].{key} must be a positive number, got {img[key]!r}")

    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in image_ids:
            raise DataError(f"{where}: annotations[{i}].image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{where}: annotations[{i}].category_id {ann['category_id']!r} is not in 'categories'")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            raise DataError(f"{where}: annotations[{i}].bbox must be [x, y, width, height] numbers")


def _complete_for_evaluation(data: dict) -> None:
    """Fill the keys COCOeval needs but many converters omit, and drop what bbox work never reads.

    COCOeval raises KeyError without `area` or `iscrowd`; segmentation polygons are
    most of COCO's memory and are not used by box detection or bbox evaluation.
    """
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.pop("segmentation", None)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow image as uint8 RGB HxWx3; 16-bit grayscale keeps its range instead of saturating."""
    if img.mode in SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


class CocoDetection:
    """Images, boxes and labels of one COCO annotation file.

    Labels are contiguous 0..K-1 in order of category id, because the head predicts
    K classes while COCO ids may have gaps; `label_to_cat_id` maps predictions back
    for evaluation. Crowd boxes are left out of the targets (they are not positives;
    COCOeval ignores detections that match them). Images without boxes are kept as
    negatives.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path):
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        data = _read_json(self.ann_file)
        _validate(data, self.ann_file)
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir} (images of {self.ann_file})")
        _complete_for_evaluation(data)

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: list[int] = [c["id"] for c in categories]
        self.cat_id_to_label: dict[int, int] = {cat_id: label for label, cat_id in enumerate(self.label_to_cat_id)}
        self.class_names: list[str] = [str(c["name"]) for c in categories]
        self.num_classes = len(categories)

        images = sorted(data["images"], key=lambda img: img["id"])
        self.image_ids: list[int] = [img["id"] for img in images]
        self._file_names = [img["file_name"] for img in images]
        self._sizes = [(int(round(img["height"])), int(round(img["width"]))) for img in images]
        self._boxes, self._labels = self._build_targets(data["annotations"])

    def _build_targets(self, annotations: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-image xyxy boxes and labels, vectorised so that COCO-sized files load in seconds."""
        index_of = {image_id: i for i, image_id in enumerate(self.image_ids)}
        kept = [ann for ann in annotations if not ann["iscrowd"]]
        owner = np.array([index_of[ann["image_id"]] for ann in kept], dtype=np.int64)
        labels = np.array([self.cat_id_to_label[ann["category_id"]] for ann in kept], dtype=np.int64)
        xywh = np.array([ann["bbox"] for ann in kept], dtype=np.float64).reshape(-1, 4)
        hw = np.array(self._sizes, dtype=np.float64).reshape(-1, 2)[owner]

        degenerate = ~np.isfinite(xywh).all(axis=1) | (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        upper = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=1)
        with np.errstate(invalid="ignore"):
            clipped = np.clip(xyxy, 0.0, upper)
            outside = ~degenerate & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
            was_clipped = ~degenerate & ~outside & (clipped != xyxy).any(axis=1)
        keep = ~degenerate & ~outside
        self._warn_bad_boxes(int(degenerate.sum()), int(outside.sum()), int(was_clipped.sum()))

        owner, labels, clipped = owner[keep], labels[keep], clipped[keep].astype(np.float32)
        order = np.argsort(owner, kind="stable")
        splits = np.cumsum(np.bincount(owner, minlength=len(self.image_ids)))[:-1]
        boxes_per_image = np.split(clipped[order], splits)
        labels_per_image = np.split(labels[order], splits)
        return boxes_per_image, labels_per_image

    def _warn_bad_boxes(self, degenerate: int, outside: int, clipped: int) -> None:
        parts = []
        if degenerate:
            parts.append(f"dropped {degenerate} boxes with zero or negative width/height")
        if outside:
            parts.append(f"dropped {outside} boxes lying entirely outside their image")
        if clipped:
            parts.append(f"clipped {clipped} boxes to their image border")
        if parts:
            warnings.warn(f"{self.ann_file}: " + ", ".join(parts), stacklevel=4)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self._file_names[i]

    def orig_size(self, i: int) -> tuple[int, int]:
        """(height, width) as the annotation file states it."""
        return self._sizes[i]

    def load_image(self, i: int) -> np.ndarray:
        """Decode image `i` as uint8 RGB HxWx3; EXIF orientation is ignored, as COCO boxes assume."""
        path = self.image_path(i)
        try:
            with Image.open(path) as img:
                return _to_rgb(img)
        except FileNotFoundError:
            raise DataError(f"image file not found: {path} (listed in {self.ann_file})")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot decode image file {path}: {e}")

    def check_images(self) -> None:
        """Fail early on a missing, unreadable or wrongly sized image, reading only file headers."""
        missing = [self.image_path(i) for i in range(len(self)) if not self.image_path(i).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self)} image files listed in {self.ann_file} are missing, first: {missing[0]}"
            )
        for i in range(len(self)):
            path = self.image_path(i)
            try:
                with Image.open(path) as img:
                    width, height = img.size
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"cannot decode image file {path}: {e}")
            self._check_size(i, height, width)

    def _check_size(self, i: int, height: int, width: int) -> None:
        expected_h, expected_w = self._sizes[i]
        if (height, width) != (expected_h, expected_w):
            raise DataError(
                f"image file {self.image_path(i)} is {width}x{height} pixels but {self.ann_file} "
                f"says {expected_w}x{expected_h}"
            )

    def __getitem__(self, i: int) -> dict:
        image = self.load_image(i)
        self._check_size(i, image.shape[0], image.shape[1])
        return {
            "image": image,
            "boxes": self._boxes[i].copy(),
            "labels": self._labels[i].copy(),
            "image_id": self.image_ids[i],
            "orig_size": self._sizes[i],
        }
