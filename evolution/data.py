"""The fixed image sets a search scores on, written once into the run directory.

The driver picks, once, the images of the supernet's search split (the training images that
`nas train-supernet` held out and recorded in `supernet.pt`) to score on, and a
seed-determined subset of the remaining training images for BN recalibration, and writes
each as a small COCO file with its annotations (`data/calib.json`: the calibration images
are augmented as training augments them, and the crops follow the boxes; `data/val.json`: the
held-out images) that points at the training image folder. The validation split is not
read: it is kept for reporting retrained models. Workers load only these files:

* no worker parses the full annotation files (COCO train2017's is 450 MB, per worker);
* every worker, and a resumed search, scores on exactly the same images in the same order,
  which is half of what makes a score independent of the worker that computed it;
* the run directory records which images the scores were computed on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from picodet_nas.data import CocoDetection, DataPaths
from picodet_nas.data.streams import fixed_subset
from picodet_nas.data.split import (DEFAULT_SEARCH_FRACTION, held_out_indices, remaining_indices, split_by_ids,
                                    subset_doc)
from picodet_nas.errors import DataError
from picodet_nas.utils.io import atomic_write_text

from .scoring import ScoringData


@dataclass(frozen=True)
class Subsets:
    data: ScoringData
    calib_images: int
    val_images: int  # the held-out images scored on
    held_out_total: int  # the whole search split
    train_total: int
    class_names: list[str]
    label_to_cat_id: list[int]
    recorded_split: bool  # False: the supernet recorded no split (see prepare_subsets)
    rescore: ScoringData | None = None  # more search-split images for re-scoring the best candidates
    rescore_images: int = 0


def prepare_subsets(paths: DataPaths, out_dir: str | Path, *, calib_images: int | None, val_images: int | None,
                    seed: int, batch_size: int, held_out_ids: Sequence[int] | None = None,
                    source: str = "the supernet", rescore_images: int | None | bool = False) -> Subsets:
    """Write `calib.json` and `val.json` into `out_dir` and check their images can be read.

    held_out_ids: the supernet's search split (image ids of the training file). None, for a
    supernet that recorded none, holds out DEFAULT_SEARCH_FRACTION of the training images by
    the same rule (such a supernet may have trained on them; the caller says so).
    `calib_images` / `val_images` / `rescore_images`: how many images (None or more than there
    are: all; rescore_images False: no re-scoring set). The re-scoring set (`val_rescore.json`)
    contains the scoring set and is written only when it is larger.
    Raises `DataError` (one line) for a missing or malformed dataset or image.
    """
    out_dir = Path(out_dir)
    train = CocoDetection(paths.train_ann, paths.train_images)
    if held_out_ids is not None:
        rest, held = split_by_ids(train, held_out_ids, source)
    else:
        held = held_out_indices(len(train), DEFAULT_SEARCH_FRACTION, 0)
        rest = remaining_indices(len(train), held)
    calib_idx = [rest[i] for i in fixed_subset(len(rest), calib_images, seed)]
    val_idx = [held[i] for i in fixed_subset(len(held), val_images, seed)]
    if not val_idx:
        raise DataError(f"{paths.train_ann}: the search split is empty")
    calib_ann, val_ann = out_dir / "calib.json", out_dir / "val.json"
    atomic_write_text(calib_ann, json.dumps(subset_doc(train, calib_idx, True, " (BN calibration)")))
    atomic_write_text(val_ann, json.dumps(subset_doc(train, val_idx, True, " (search split, scored on)")))
    for ann in (calib_ann, val_ann):
        CocoDetection(ann, paths.train_images).check_images()  # fail here, in one line, not inside a worker
    images = str(Path(paths.train_images).resolve())
    data = ScoringData(calib_ann=str(calib_ann.resolve()), calib_images=images, val_ann=str(val_ann.resolve()),
                       val_images=images, batch_size=batch_size)
    rescore, rescore_count = None, 0
    if rescore_images is not False:
        more = [held[i] for i in fixed_subset(len(held), rescore_images, seed + 1)]
        more = sorted(set(more) | set(val_idx))
        if len(more) > len(val_idx):
            rescore_ann = out_dir / "val_rescore.json"
            atomic_write_text(rescore_ann, json.dumps(subset_doc(train, more, True, " (search split, re-scoring)")))
            CocoDetection(rescore_ann, paths.train_images).check_images()
            rescore = ScoringData(calib_ann=data.calib_ann, calib_images=images, val_ann=str(rescore_ann.resolve()),
                                  val_images=images, batch_size=batch_size)
            rescore_count = len(more)
    return Subsets(data=data, calib_images=len(calib_idx), val_images=len(val_idx), held_out_total=len(held),
                   train_total=len(train), class_names=list(train.class_names),
                   label_to_cat_id=list(train.label_to_cat_id), recorded_split=held_out_ids is not None,
                   rescore=rescore, rescore_images=rescore_count)
