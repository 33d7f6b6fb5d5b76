"""The fixed image sets a search scores on, written once into the run directory.

The driver picks, once, a seed-determined subset of the training images for BN
recalibration and a subset of the validation images held out for scoring, and writes each
as a small COCO file (`data/calib.json`, `data/val.json`) that points at the original image
folders. Workers load only these files:

* no worker parses the full annotation files (COCO train2017's is 450 MB, per worker);
* every worker, and a resumed search, scores on exactly the same images in the same order,
  which is half of what makes a score independent of the worker that computed it;
* the run directory records which images the scores were computed on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from picodet_nas.data import CocoDetection, DataPaths
from picodet_nas.data.loader import fixed_subset
from picodet_nas.errors import DataError
from picodet_nas.utils.io import atomic_write_text

from .scoring import ScoringData


@dataclass(frozen=True)
class Subsets:
    data: ScoringData
    calib_images: int
    val_images: int
    train_total: int
    val_total: int
    class_names: list[str]
    label_to_cat_id: list[int]


def _subset_doc(dataset: CocoDetection, indices: list[int], with_annotations: bool) -> dict:
    """The COCO document of `dataset` restricted to the images at `indices` (all categories kept,
    so the label <-> category id mapping is that of the full set)."""
    full = dataset.coco.dataset
    ids = {dataset.image_ids[i] for i in indices}
    images = sorted((img for img in full["images"] if img["id"] in ids), key=lambda img: img["id"])
    annotations = [a for a in full.get("annotations", []) if a["image_id"] in ids] if with_annotations else []
    return {
        "info": {"description": f"picodet-nas evolve: {len(images)} images of {dataset.ann_file}"},
        "images": images,
        "annotations": annotations,
        "categories": full["categories"],
    }


def prepare_subsets(paths: DataPaths, out_dir: str | Path, *, calib_images: int | None, val_images: int | None,
                    seed: int, batch_size: int) -> Subsets:
    """Write `calib.json` and `val.json` into `out_dir` and check their images can be read.

    `calib_images` / `val_images`: how many images (None or more than there are: all).
    Raises `DataError` (one line) for a missing or malformed dataset or image.
    """
    out_dir = Path(out_dir)
    train = CocoDetection(paths.train_ann, paths.train_images)
    val = CocoDetection(paths.val_ann, paths.val_images)
    if train.label_to_cat_id != val.label_to_cat_id:
        raise DataError(f"{paths.train_ann} and {paths.val_ann} list different categories "
                        f"(ids {train.label_to_cat_id} vs {val.label_to_cat_id}); a detector's labels need one set")
    calib_idx = fixed_subset(len(train), calib_images, seed)
    val_idx = fixed_subset(len(val), val_images, seed)
    calib_ann, val_ann = out_dir / "calib.json", out_dir / "val.json"
    atomic_write_text(calib_ann, json.dumps(_subset_doc(train, calib_idx, with_annotations=False)))
    atomic_write_text(val_ann, json.dumps(_subset_doc(val, val_idx, with_annotations=True)))
    for ann, images in ((calib_ann, paths.train_images), (val_ann, paths.val_images)):
        CocoDetection(ann, images).check_images()  # fail here, in one line, not inside a worker
    data = ScoringData(calib_ann=str(calib_ann.resolve()), calib_images=str(Path(paths.train_images).resolve()),
                       val_ann=str(val_ann.resolve()), val_images=str(Path(paths.val_images).resolve()),
                       batch_size=batch_size)
    return Subsets(data=data, calib_images=len(calib_idx), val_images=len(val_idx), train_total=len(train),
                   val_total=len(val), class_names=list(val.class_names), label_to_cat_id=list(val.label_to_cat_id))
