"""Toy inputs for the search's tests and benchmarks: never for a real search.

* `TOY_SPACE`: a tiny joint space (scale 0.25, 96-128 px) that scores in a fraction of a
  second per candidate on one CPU thread.
* `toy_supernet`: its supernet with random weights, saved in the `supernet.pt` format of
  `nas train-supernet` (same meta keys). The class outputs get a spread of biases and
  weights, so a random network ranks its detections differently per architecture and the
  mAP values differ (a freshly initialised head scores every prior alike).
* `synthetic_table`: a latency table of the real format, built with the latency package's
  own `plan_for` / `build_table` from *analytic* part timings (a multiply-add count per part)
  instead of measurements: instant and exactly reproducible, so budgets in tests are exact.
* `make_toy_inputs`: all of it plus a generated shapes dataset, in one folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from picodet_nas.arch import NUM_BLOCKS, STEM_CHANNELS, Arch, block_stage
from picodet_nas.checkpoint import save_checkpoint
from picodet_nas.data import CocoDetection, resolve_data
from picodet_nas.data.shapes import CATEGORIES, make_shapes_dataset
from picodet_nas.data.split import DEFAULT_SEARCH_FRACTION, held_out_indices
from picodet_nas.latency.plan import block_input_channels, block_input_hw
from picodet_nas.latency.profiler import plan_for
from picodet_nas.latency.results import FIGURES, build_table
from picodet_nas.latency.run_bundle import RESULTS_FORMAT, RUNNER_VERSION
from picodet_nas.latency.table import save_table
from picodet_nas.space import SearchSpace
from supernet import Supernet

TOY_SPACE: dict[str, Any] = {
    "name": "toy",
    "description": "a tiny joint space for the search's tests and benchmarks",
    "base": {"scale": 0.25, "channel_ratio": [0.5] * NUM_BLOCKS, "neck_channels": 16, "head_convs": 1,
             "input_size": 96},
    "choices": {"channel_ratio": [0.5, 1.0], "kernel_size": [3, 5], "neck_channels": [16, 24],
                "head_convs": [1, 2], "input_size": [96, 128]},
}
MS_PER_MAC = 5e-7  # 2 GMAC/s, a small ARM core; only the proportions matter


# ---- analytic latency -------------------------------------------------------------------------
def _stem_macs(size: int) -> float:
    return (size / 2) ** 2 * 3 * 9 * STEM_CHANNELS + (size / 4) ** 2 * STEM_CHANNELS * 9


def _block_macs(arch: Arch, i: int) -> float:
    h = block_input_hw(arch.input_size, i)
    cin, mid, k = block_input_channels(arch, i), arch.mid_channels[i], arch.kernel_size[i]
    cout = arch.stage_out_channels[block_stage(i)]
    return h * h * (cin * mid / 2 + mid / 2 * k * k + mid * cout / 2)


def _neck_head_macs(arch: Arch, num_classes: int) -> float:
    n, s = arch.neck_channels, arch.input_size
    cells = sum((s / stride) ** 2 for stride in (8, 16, 32, 64))
    return cells * (n * (sum(arch.stage_out_channels) / 3 + 25 + 4 * n) + arch.head_convs * 2 * n * (25 + n)
                    + n * (num_classes + 32))


def synthetic_ms(arch: Arch, num_classes: int) -> float:
    """Analytic whole-network latency: the sum of the parts, as a table adds them."""
    macs = _stem_macs(arch.input_size) + sum(_block_macs(arch, i) for i in range(NUM_BLOCKS))
    return MS_PER_MAC * (macs + _neck_head_macs(arch, num_classes))


def _part_ms(spec: Mapping[str, Any], num_classes: int) -> float:
    kind = spec["kind"]
    if kind == "stem":
        return MS_PER_MAC * _stem_macs(spec["inputs"][0][-1])
    arch = Arch.from_dict(spec["arch"])
    if kind == "block":
        return MS_PER_MAC * _block_macs(arch, spec["block"])
    if kind == "neck_head":
        return MS_PER_MAC * _neck_head_macs(arch, num_classes)
    return synthetic_ms(arch, num_classes)  # a whole subnet


def synthetic_table(space: SearchSpace, num_classes: int, *, input_sizes=None, name: str = "synthetic-toy") -> dict:
    """A latency table of `space` from analytic timings, through the real table builder."""
    manifest = plan_for(space, input_sizes=input_sizes, num_classes=num_classes, calibrate=4, validate=4, seed=0)
    timings = {}
    for model, spec in manifest["models"].items():
        ms = _part_ms(spec, num_classes)
        timings[model] = {**{f: ms for f in FIGURES}, "samples": 1, "spread": 0.0}
    results = {
        "format": RESULTS_FORMAT, "runner_version": RUNNER_VERSION, "manifest": manifest, "timings": timings,
        "settings": manifest["settings"], "backend": "synthetic", "backend_version": "analytic",
        "device": {"device": "synthetic", "cpu_model": "none (analytic multiply-add count)", "os": "none"},
        "date": "2026-01-01T00:00:00+0000", "wall_time_s": 0.0,
    }
    return build_table(results, name=name, source="synthetic")


# ---- supernet with random weights -------------------------------------------------------------
def toy_supernet(space: SearchSpace, num_classes: int = len(CATEGORIES), seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    model = Supernet(space, num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for out in model.head.outputs:
            out.weight[:num_classes].normal_(0.0, 0.05, generator=g)
            out.bias[:num_classes].uniform_(-4.0, -1.0, generator=g)
            out.weight[num_classes:].normal_(0.0, 0.05, generator=g)
    return model


def save_toy_supernet(model: Supernet, path: str | Path, held_out_ids: list[int] | None = None) -> Path:
    """`model` in the format `nas train-supernet` writes (supernet/train.py), shapes classes;
    `held_out_ids`: the training images its search split holds out (None: no split recorded)."""
    meta = {**model.checkpoint_meta(), "space_definition": model.space.to_dict(),
            "class_names": [n for _, n in CATEGORIES], "label_to_cat_id": [c for c, _ in CATEGORIES]}
    if held_out_ids is not None:
        meta["search_split"] = {"fraction": DEFAULT_SEARCH_FRACTION, "seed": 0, "held_out_ids": list(held_out_ids)}
    save_checkpoint(path, model.state_dict(), meta, epoch=0, metrics={})
    return Path(path)


@dataclass(frozen=True)
class ToyInputs:
    space: Path
    supernet: Path
    table: Path
    data: Path


def make_toy_inputs(root: str | Path, *, space: Mapping[str, Any] = TOY_SPACE, train_images: int = 16,
                    val_images: int = 8, image_size: int = 96, seed: int = 0) -> ToyInputs:
    """Space YAML, supernet.pt, latency table and a shapes dataset under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    space_path = root / "space.yaml"
    space_path.write_text(yaml.safe_dump(dict(space), sort_keys=False))
    sp = SearchSpace.from_dict(dict(space), source=str(space_path))
    data = make_shapes_dataset(root / "data", train=train_images, val=val_images, image_size=image_size, seed=seed,
                               overwrite=True)
    paths = resolve_data(data)
    train = CocoDetection(paths.train_ann, paths.train_images)
    held = [train.image_ids[i] for i in held_out_indices(len(train), DEFAULT_SEARCH_FRACTION, 0)]
    supernet_path = save_toy_supernet(toy_supernet(sp, seed=seed), root / "supernet.pt", held)
    table_path = root / "table.json"
    save_table(synthetic_table(sp, len(CATEGORIES)), table_path)
    return ToyInputs(space=space_path, supernet=supernet_path, table=table_path, data=data)
