"""The search split: training images held out from supernet training for scoring candidates.

A search that scores candidates on the validation split selects on the images its final
figures are reported on. Instead, `nas train-supernet` holds out a seed-determined fraction of
the *training* images (default 10%): the supernet never trains on them, the supernet's
landmark evaluations and every candidate of `nas evolve` are scored on them, and the
validation split is used only to report retrained models.

The split is a pure function of (image ids of the training file, fraction, seed); the run
directory keeps both parts as COCO files (`data/supernet_train.json`, `data/search.json`)
and the supernet checkpoint records the held-out image ids, so a search finds exactly the
images its supernet did not see.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError
from ..utils.io import atomic_write_text
from .coco import CocoDetection
from .streams import SPLIT_STREAM, sorted_choice

DEFAULT_SEARCH_FRACTION = 0.1
MIN_HELD_OUT = 8
TRAIN_FILE = "supernet_train.json"
HELD_OUT_FILE = "search.json"


def subset_doc(dataset: CocoDetection, indices: Sequence[int], with_annotations: bool, note: str = "") -> dict:
    """The COCO document of `dataset` restricted to the images at `indices` (all categories kept,
    so the label <-> category id mapping is that of the full set)."""
    full = dataset.coco.dataset
    ids = {dataset.image_ids[i] for i in indices}
    images = sorted((img for img in full["images"] if img["id"] in ids), key=lambda img: img["id"])
    annotations = [a for a in full.get("annotations", []) if a["image_id"] in ids] if with_annotations else []
    return {
        "info": {"description": f"picodet-nas: {len(images)} images of {dataset.ann_file}{note}"},
        "images": images,
        "annotations": annotations,
        "categories": full["categories"],
    }


def held_out_indices(num_images: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of the held-out images: round(fraction x num_images), at least MIN_HELD_OUT."""
    if not 0 < fraction < 1:
        raise DataError(f"search fraction must be in (0, 1), got {fraction}")
    count = max(MIN_HELD_OUT, int(round(fraction * num_images)))
    if num_images - count < MIN_HELD_OUT:
        raise DataError(f"{num_images} training images are too few to hold out {count} for the search "
                        f"and train on the rest; expected at least {2 * MIN_HELD_OUT}")
    return sorted_choice(SPLIT_STREAM, seed, num_images, count)


def remaining_indices(num_images: int, held: Sequence[int]) -> list[int]:
    """The indices of 0..num_images-1 not in `held`, in order."""
    held_set = set(held)
    return [i for i in range(num_images) if i not in held_set]


@dataclass(frozen=True)
class SearchSplit:
    """Where a supernet's training and held-out images are, and which they are."""

    fraction: float
    seed: int
    source_ann: str  # the full training annotation file
    train_ann: str  # the images the supernet trains on
    held_out_ann: str  # the images it never sees
    held_out_ids: tuple[int, ...]
    train_images: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["held_out_ids"] = list(self.held_out_ids)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSplit":
        return cls(**{**data, "held_out_ids": tuple(int(i) for i in data["held_out_ids"])})


def make_search_split(train_set: CocoDetection, fraction: float, seed: int, out_dir: str | Path) -> SearchSplit:
    """Write both parts of `train_set` into `out_dir` (atomically) and describe them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        held = held_out_indices(len(train_set), fraction, seed)
    except DataError as e:
        raise DataError(f"{train_set.ann_file}: {e}") from None
    rest = remaining_indices(len(train_set), held)
    train_ann, held_ann = out_dir / TRAIN_FILE, out_dir / HELD_OUT_FILE
    atomic_write_text(train_ann, json.dumps(subset_doc(train_set, rest, True, " (supernet training)")))
    atomic_write_text(held_ann, json.dumps(subset_doc(train_set, held, True, " (held out for the search)")))
    return SearchSplit(fraction=float(fraction), seed=int(seed), source_ann=str(Path(train_set.ann_file).resolve()),
                       train_ann=str(train_ann.resolve()), held_out_ann=str(held_ann.resolve()),
                       held_out_ids=tuple(train_set.image_ids[i] for i in held), train_images=len(rest))


def split_by_ids(train_set: CocoDetection, held_out_ids: Sequence[int], source: str) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) of `train_set` for a recorded split; a one-line
    `DataError` naming `source` when the training file lacks some of the held-out images."""
    index_of = {image_id: i for i, image_id in enumerate(train_set.image_ids)}
    missing = [i for i in held_out_ids if i not in index_of]
    if missing:
        raise DataError(f"{train_set.ann_file} lacks {len(missing)} of the {len(held_out_ids)} held-out images "
                        f"recorded in {source} (e.g. image id {missing[0]}); give the data the supernet was "
                        "trained on")
    held = sorted(index_of[i] for i in held_out_ids)
    return remaining_indices(len(train_set), held), held
