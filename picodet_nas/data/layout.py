"""Where a dataset's annotation files and image folders are.

Two folder layouts are recognised so that `--data DIR` is all a user has to type:

* COCO 2017: `annotations/instances_{train,val}2017.json`, `train2017/`, `val2017/`
* simple:    `annotations/instances_{train,val}.json`, `images/` (shared by both splits)

Explicit paths override what the layout would give, so a dataset in any other
arrangement can still be used by naming its four paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from picodet_nas.errors import DataError

COCO2017_LAYOUT = {
    "train_ann": "annotations/instances_train2017.json",
    "val_ann": "annotations/instances_val2017.json",
    "train_images": "train2017",
    "val_images": "val2017",
}
SIMPLE_LAYOUT = {
    "train_ann": "annotations/instances_train.json",
    "val_ann": "annotations/instances_val.json",
    "train_images": "images",
    "val_images": "images",
}
LAYOUTS_HELP = (
    "expected the COCO 2017 layout (annotations/instances_{train,val}2017.json, train2017/, val2017/) "
    "or the simple layout (annotations/instances_{train,val}.json, images/)"
)


@dataclass(frozen=True)
class DataPaths:
    """The four paths a training run needs; existence is checked when they are loaded."""

    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path


def _detect_layout(data_dir: Path) -> dict[str, str] | None:
    """The layout whose annotation files (either split) exist in `data_dir`, COCO 2017 first.

    One split is enough, so an evaluation-only folder (val only) still resolves.
    """
    for layout in (COCO2017_LAYOUT, SIMPLE_LAYOUT):
        if (data_dir / layout["train_ann"]).is_file() or (data_dir / layout["val_ann"]).is_file():
            return layout
    return None


def resolve_data(
    data_dir: str | Path | None,
    *,
    train_ann: str | Path | None = None,
    val_ann: str | Path | None = None,
    train_images: str | Path | None = None,
    val_images: str | Path | None = None,
) -> DataPaths:
    """Resolve the dataset paths from a folder in a known layout and/or explicit overrides."""
    explicit = {
        "train_ann": train_ann,
        "val_ann": val_ann,
        "train_images": train_images,
        "val_images": val_images,
    }
    missing = [name for name, value in explicit.items() if value is None]
    resolved = {name: Path(value) for name, value in explicit.items() if value is not None}
    if missing:
        if data_dir is None:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            raise DataError(f"no data folder given and no explicit path for {flags}; pass --data DIR")
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"data folder not found: {data_dir}")
        layout = _detect_layout(data_dir)
        if layout is None:
            raise DataError(f"data folder {data_dir} is in no known layout: {LAYOUTS_HELP}")
        for name in missing:
            resolved[name] = data_dir / layout[name]
    return DataPaths(**resolved)
