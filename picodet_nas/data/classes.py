"""Whether a model and a dataset (or two datasets) share their classes.

`Classes` is what either side records: the number of classes and, where known, their names
and COCO category ids in label order (a checkpoint's meta: `num_classes`, `class_names`,
`label_to_cat_id`). `check_same_classes` requires the same classes, field by field, and
refuses the first difference in one line that names both sides; `label_mapping` is the
looser check of an evaluation, which only needs every category the model predicts to exist
in the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError
from .coco import CocoDetection


@dataclass(frozen=True)
class Classes:
    source: str  # the file (or folder) they come from, named in messages
    count: int
    names: tuple[str, ...] | None = None
    cat_ids: tuple[int, ...] | None = None

    @classmethod
    def of(cls, source: str | Path, names: Sequence[str] | None, cat_ids: Sequence[int] | None,
           count: int | None = None) -> "Classes":
        known = cat_ids if cat_ids is not None else names
        n = count if count is not None else len(known) if known is not None else 0
        return cls(str(source), n, tuple(str(x) for x in names) if names is not None else None,
                   tuple(int(x) for x in cat_ids) if cat_ids is not None else None)

    @classmethod
    def of_dataset(cls, dataset: CocoDetection, source: str | Path | None = None) -> "Classes":
        return cls.of(source if source is not None else dataset.ann_file, dataset.class_names,
                      dataset.label_to_cat_id)

    @classmethod
    def of_checkpoint(cls, meta: Mapping[str, Any], source: str | Path) -> "Classes":
        """From a checkpoint's meta, whose `num_classes` the caller has checked."""
        return cls.of(source, meta.get("class_names"), meta.get("label_to_cat_id"), meta["num_classes"])


def class_names_of(meta: Mapping[str, Any], num_classes: int) -> list[str]:
    """A checkpoint's class names, or the labels '0', '1', ... when its meta records none."""
    return list(meta.get("class_names") or [str(i) for i in range(num_classes)])


def check_same_classes(model: Classes, data: Classes, hint: str) -> None:
    """The same number of classes, category ids and names, as far as both sides record them;
    else a `DataError`: `<model> has <field> ..., <data> has ...: <hint>`."""
    if model.count != data.count:
        raise DataError(f"{model.source} has {model.count} classes, {data.source} has {data.count}: {hint}")
    for field, what in (("cat_ids", "category ids"), ("names", "classes")):
        mine, theirs = getattr(model, field), getattr(data, field)
        if mine is not None and theirs is not None and mine != theirs:
            raise DataError(f"{model.source} has {what} {list(mine)}, {data.source} has {list(theirs)}: {hint}")


def label_mapping(model: Classes, data: Classes) -> list[int]:
    """The model's labels as the data's category ids: the ones the model records, each of which
    the data must have; a model that records none must have the data's number of classes."""
    if model.cat_ids is None:
        if model.count != data.count:
            raise DataError(f"{model.source} predicts {model.count} classes, {data.source} has {data.count} "
                            f"categories")
        return list(data.cat_ids or range(data.count))
    unknown = sorted(set(model.cat_ids) - set(data.cat_ids or ()))
    if unknown:
        raise DataError(f"{model.source} has category ids {list(model.cat_ids)}; {data.source} lacks id {unknown[0]}")
    return list(model.cat_ids)
