"""What to time for a latency table: the distinct parts of a space, and the whole subnets.

A PicoDet network is timed as the sum of its parts: the stem, the 13 backbone blocks and
the neck+head (CSP-PAN, PicoHead and the deployed output layout). A part's cost depends
only on its structure and input shape, so the plan holds each *distinct* part once:
blocks 1-2 of stage 0 have the same shapes and share one measurement per choice, as do
blocks 4-9 and 11-12; two channel ratios that round to the same width share one too;
the neck+head depends only on the scale, neck width, head depth and input size.

The plan is the bundle's manifest: a JSON-ready dict naming every model to time (file,
kind, the `Arch` that builds it, input shapes), the table rows that read each measurement
(`entries`, `fixed`), and the calibration and validation subnets. The local profiler and
a remote device both time exactly the models it names, and `table.build_table` turns the
timings back into a table through it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import random
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..arch import NUM_BLOCKS, STEM_CHANNELS, Arch, block_is_downsample, block_stage
from ..errors import SpaceError
from ..export import OPSET, DeployModel, export_onnx
from ..models import build_model
from ..models.esnet import Stem, build_block
from ..space import SearchSpace
from . import run_bundle

PLAN_VERSION = 1


# ---------------------------------------------------------------------------- shapes
def block_input_hw(input_size: int, i: int) -> int:
    """Spatial size of the input of block `i`: the stem divides by 4, each earlier
    stride-2 block (0, 3, 10) by 2 more."""
    downsamples = sum(1 for j in range(i) if block_is_downsample(j))
    return input_size // (4 * 2 ** downsamples)


def block_input_channels(arch: Arch, i: int) -> int:
    c = arch.stage_out_channels
    stage = block_stage(i)
    if block_is_downsample(i):
        return STEM_CHANNELS if stage == 0 else c[stage - 1]
    return c[stage]


def neck_input_shapes(arch: Arch) -> list[list[int]]:
    """C3, C4, C5 as the backbone hands them to the neck: strides 8, 16, 32."""
    s = arch.input_size
    return [[1, c, s // st, s // st] for c, st in zip(arch.stage_out_channels, (8, 16, 32))]


# ---------------------------------------------------------------------------- part identity
def block_part(arch: Arch, i: int) -> str:
    """Readable id of block `i` of `arch`: everything its structure and input shape depend on."""
    c = arch.stage_out_channels[block_stage(i)]
    cin, mid, k, h = block_input_channels(arch, i), arch.mid_channels[i], arch.kernel_size[i], block_input_hw(arch.input_size, i)
    if block_is_downsample(i):
        return f"ds_c{cin}-{c}_m{mid}_k{k}_h{h}"
    return f"es_c{c}_m{mid}_k{k}_h{h}"


def stem_part(input_size: int) -> str:
    return f"stem_i{input_size}"


def neck_head_part(arch: Arch, num_classes: int) -> str:
    c = "-".join(str(x) for x in arch.stage_out_channels)
    return f"neckhead_c{c}_n{arch.neck_channels}_h{arch.head_convs}_i{arch.input_size}_cls{num_classes}"


def block_options(space: SearchSpace, i: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The channel ratios and the kernel sizes block `i` can take in `space`."""
    return (tuple(space.choices.get("channel_ratio", (space.base.channel_ratio[i],))),
            tuple(space.choices.get("kernel_size", (space.base.kernel_size[i],))))


def neck_head_options(space: SearchSpace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The neck widths and the head depths `space` can take."""
    return (tuple(space.choices.get("neck_channels", (space.base.neck_channels,))),
            tuple(space.choices.get("head_convs", (space.base.head_convs,))))


def block_choices(space: SearchSpace, i: int) -> list[tuple[float, int]]:
    """(channel_ratio, kernel_size) pairs block `i` can take in `space`."""
    return list(itertools.product(*block_options(space, i)))


def neck_head_choices(space: SearchSpace) -> list[tuple[int, int]]:
    return list(itertools.product(*neck_head_options(space)))


def with_block_choice(base: Arch, i: int, ratio: float, kernel: int, input_size: int) -> Arch:
    r, k = list(base.channel_ratio), list(base.kernel_size)
    r[i], k[i] = ratio, kernel
    return base.replace(channel_ratio=tuple(r), kernel_size=tuple(k), input_size=input_size)


# ---------------------------------------------------------------------------- the plan
def timing_settings(**overrides: Any) -> dict:
    """The timing settings of a manifest: the runner's defaults, with `overrides` (None: default).

    `statistic` is not a timing setting but travels with them, so that a bundle's table is
    built with the statistic chosen when the bundle was made."""
    s = {"threads": run_bundle.DEFAULT_THREADS, "repeats": run_bundle.DEFAULT_REPEATS,
         "warmup": run_bundle.DEFAULT_WARMUP, "burst": run_bundle.DEFAULT_BURST, "clock": "wall",
         "max_loaded": run_bundle.DEFAULT_MAX_LOADED, "spread_limit": run_bundle.DEFAULT_SPREAD_LIMIT,
         "max_remeasure": run_bundle.DEFAULT_MAX_REMEASURE, "allow_spinning": None, "pin_core": None,
         "phases": run_bundle.DEFAULT_PHASES, "statistic": "median", "precision": "fp32", "seed": 0}
    s.update({k: v for k, v in overrides.items() if v is not None})
    return s


def check_input_sizes(space: SearchSpace, input_sizes: Iterable[int] | None) -> list[int]:
    if not input_sizes:
        return list(space.input_sizes)
    sizes = sorted(set(int(s) for s in input_sizes))
    for s in sizes:
        if s not in space.input_sizes:
            raise SpaceError(f"--input-size {s} is not an input size of space {space.name!r} "
                             f"(choices: {', '.join(map(str, space.input_sizes))})")
    return sizes


def sample_subnets(space: SearchSpace, sizes: list[int], count: int, rng: random.Random,
                   exclude: set[Arch], stratify: bool) -> list[Arch]:
    """`count` distinct random subnets at the given sizes, none of them in `exclude`.

    Stratified sampling cycles through the sizes so that a calibration set spans them all.
    """
    out: list[Arch] = []
    seen = set(exclude)
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 1000 * max(count, 1):
            raise SpaceError(f"space {space.name!r} is too small for {count} distinct subnets "
                             f"besides the {len(exclude)} already chosen")
        size = sizes[len(out) % len(sizes)] if stratify else rng.choice(sizes)
        arch = space.sample(rng).replace(input_size=size)
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
    return out


def make_plan(space: SearchSpace, *, input_sizes: Iterable[int] | None = None, num_classes: int = 80,
              calibrate: int = 30, validate: int = 30, seed: int = 0, settings: dict | None = None) -> dict:
    """The manifest of everything to time for `space` at `input_sizes` (default: all of the space's).

    Model names are the part ids (`block_part` and friends) and `calib_NN` / `val_NN` for the
    whole subnets; each model's file is `models/<name>.onnx`.
    """
    sizes = check_input_sizes(space, input_sizes)
    base = space.base
    models: dict[str, dict] = {}
    structure: dict[str, str] = {}  # part id -> module repr, to prove that the id captures the structure

    def add_part(name: str, spec: dict, module: nn.Module | None = None) -> str:
        if module is not None:
            text = repr(module) + repr(spec["inputs"])
            if structure.setdefault(name, text) != text:
                raise RuntimeError(f"part id {name} names two different structures; block_part() is missing a field")
        if name not in models:
            models[name] = {"group": "part", "file": f"models/{name}.onnx", **spec}
        return name

    entries, stems, neck_heads = [], [], []
    for size in sizes:
        stems.append({"input_size": size, "part": add_part(stem_part(size), {
            "kind": "stem", "inputs": [[1, 3, size, size]]})})
        for i in range(NUM_BLOCKS):
            for ratio, kernel in block_choices(space, i):
                arch = with_block_choice(base, i, ratio, kernel, size)
                spec = {"kind": "block", "block": i, "arch": arch.to_dict(),
                        "inputs": [[1, block_input_channels(arch, i), block_input_hw(size, i), block_input_hw(size, i)]]}
                part = add_part(block_part(arch, i), spec, build_block(arch, i))
                entries.append({"block": i, "channel_ratio": ratio, "kernel_size": kernel,
                                "input_size": size, "part": part})
        for neck, head in neck_head_choices(space):
            arch = base.replace(neck_channels=neck, head_convs=head, input_size=size)
            part = add_part(neck_head_part(arch, num_classes), {
                "kind": "neck_head", "arch": arch.to_dict(), "inputs": neck_input_shapes(arch)})
            neck_heads.append({"neck_channels": neck, "head_convs": head, "input_size": size, "part": part})

    rng = random.Random(seed)
    validation = sample_subnets(space, sizes, validate, rng, set(), stratify=False)
    calibration = sample_subnets(space, sizes, calibrate, rng, set(validation), stratify=True)
    subnets: dict[str, list[dict]] = {"calibration": [], "validation": []}
    for prefix, key, archs in (("calib", "calibration", calibration), ("val", "validation", validation)):
        for j, arch in enumerate(archs):
            name = f"{prefix}_{j:03d}"
            models[name] = {"group": "whole", "file": f"models/{name}.onnx", "kind": "whole",
                            "arch": arch.to_dict(), "inputs": [[1, 3, arch.input_size, arch.input_size]]}
            subnets[key].append({"arch": arch.to_dict(), "model": name})

    return {
        "format": run_bundle.MANIFEST_FORMAT,
        "version": PLAN_VERSION,
        "space": {**space.ref(), "definition": space.to_dict()},
        "input_sizes": sizes,
        "num_classes": num_classes,
        "batch": 1,
        "settings": timing_settings(**{**(settings or {}), "seed": seed}),
        "entries": entries,
        "fixed": {"stem": stems, "neck_head": neck_heads},
        "calibration": subnets["calibration"],
        "validation": subnets["validation"],
        "models": models,
    }


# ---------------------------------------------------------------------------- building and exporting
class _Features(nn.Module):
    """Neck + head of a PicoDet fed the backbone features directly, so that `DeployModel`
    (the deployed output layout) wraps the neck+head part exactly as it wraps a whole network."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.neck, self.head = model.neck, model.head
        self.strides, self.num_classes = model.strides, model.num_classes

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return self.head(self.neck(list(feats)))


def build_module(spec: dict, num_classes: int) -> tuple[nn.Module, tuple]:
    """The eval-mode module a plan entry names, and random example inputs of its shapes.

    Blocks come from `build_block(arch, i)` and the neck+head from `build_model(arch)`: the
    code that builds the real network, so a part is timed as the network contains it.
    """
    inputs = tuple(torch.randn(*shape) for shape in spec["inputs"])
    kind = spec["kind"]
    if kind == "stem":
        module: nn.Module = Stem()
    elif kind == "block":
        module = build_block(Arch.from_dict(spec["arch"]), spec["block"])
    elif kind == "neck_head":
        module = DeployModel(_Features(build_model(Arch.from_dict(spec["arch"]), num_classes)))
        inputs = (inputs,)  # one argument: the tuple of features
    elif kind == "whole":
        module = DeployModel(build_model(Arch.from_dict(spec["arch"]), num_classes))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return module.eval(), inputs


def export_model(spec: dict, num_classes: int, bundle_dir: Path, seed: int = 0, precision: str = "fp32") -> Path:
    """Export one plan entry to `bundle_dir / spec['file']` and move its conv weights out (`hollow`).

    Whole networks go through `export_onnx` (the deployed form, no post-processing) with a
    static batch of 1; parts use the same exporter settings. `precision` int8: the float export
    is quantized statically (`int8.quantize_onnx`, calibrated on random inputs: an integer
    kernel's cost depends on shapes, not values) and keeps its int8 weights inside the file.
    """
    torch.manual_seed(seed)
    path = Path(bundle_dir) / spec["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "whole":
        arch = Arch.from_dict(spec["arch"])
        export_onnx(build_model(arch, num_classes), path, input_size=arch.input_size, dynamic_batch=False)
    else:
        module, inputs = build_module(spec, num_classes)
        names = ["x"] if spec["kind"] != "neck_head" else ["c3", "c4", "c5"]
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=names)
    if precision == "int8":
        from .int8 import quantize_onnx, random_batches

        quantize_onnx(path, path, random_batches(path, seed=seed))
        spec.pop("weights", None)
        return path
    spec["weights"] = {"file": Path(spec["file"]).with_suffix(".weights").as_posix(), **hollow(path)}
    return path


def hollow(path: Path) -> dict[str, Any]:
    """Move the float weights and biases of every Conv of an ONNX file to an external-data file
    (`<name>.weights` beside it) that is not written: the runner fills it with random values
    before loading (`run_bundle.write_weights`). Returns its size and the (offset, count,
    fan_in) of each tensor.

    This keeps a bundle small (graph only), and the local profiler times the very same files.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    conv_role: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            for idx in (1, 2):
                if idx < len(node.input) and node.input[idx] in inits:
                    conv_role[node.input[idx]] = idx
    weights_name = path.with_suffix(".weights").name
    offset, tensors = 0, []
    for name, role in conv_role.items():
        t = inits[name]
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(t)
        count = int(arr.size)
        fan_in = int(np.prod(arr.shape[1:])) if role == 1 else 0
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", weights_name), ("offset", str(offset)), ("length", str(4 * count))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        tensors.append([offset, count, fan_in])
        offset += 4 * count
        offset += -offset % 64  # keep every tensor 64-byte aligned
    onnx.save(model, str(path))
    return {"bytes": offset, "tensors": tensors}
