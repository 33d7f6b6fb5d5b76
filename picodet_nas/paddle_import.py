"""PaddleDetection's legacy PicoDet weights (`.pdparams`) as a picodet-nas model file.

A `.pdparams` file is a pickle of `{name: numpy array}` (plus Paddle's own
`StructuredToParameterName@@` table of internal names). `read_pdparams` unpickles it with an
unpickler that rebuilds nothing but plain containers, numpy dtypes and numpy arrays of numbers,
so a crafted file cannot run code: a pickle that names any other callable (`os.system`, ...)
is refused in one line before anything of it is executed.

`paddle_names(arch)` lists, for every tensor of `build_model(arch)`, the name the same tensor
has in PaddleDetection's legacy network (ESNet backbone, CSP-PAN neck, PicoHead with its
shared cls/reg tower). `import_paddle` takes every tensor by that name, checks its shape, and
refuses in one line, naming the tensor, anything the network needs and the file lacks,
anything the file holds that maps onto nothing, and any shape that differs. Two Paddle tensors
have no counterpart and are checked, then dropped: the `ScaleReg` factors PicoHead's parent
class creates but PicoHead never applies, and the fixed `[0, 1, ..., reg_max]` projection of
the box distributions, which our decoding computes itself.

With `backbone_only`, the file is an ESNet (its tensor names with or without the `backbone.`
prefix); a whole detector's neck and head are then dropped on purpose. The written checkpoint
is of kind `backbone` and starts trainings (`--init`); it is not a detector to evaluate.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import __version__
from .arch import NUM_BLOCKS, REG_MAX, STRIDES, Arch, block_is_downsample, block_stage
from .checkpoint import save_checkpoint
from .data.transforms import PADDLE_EVAL_PREPROCESSING
from .errors import CheckpointError, UserError
from .models import build_model

STRUCTURE_KEY = "StructuredToParameterName@@"  # paddle.save's table of internal parameter names
FORMAT_NAME = "PaddleDetection legacy PicoDet (.pdparams)"
PROJECT_KEY = "head.distribution_project.project"
_BN = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}

# The 80 COCO 2017 categories: (category id, name), in label order.
COCO_CATEGORIES = tuple(enumerate((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", None, "backpack", "umbrella", None, None, "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", None, "dining table", None, None, "toilet", None, "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", None, "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush"), start=1))
COCO_CATEGORIES = tuple((i, name) for i, name in COCO_CATEGORIES if name is not None)


# ---- reading a .pdparams file without running code -------------------------------------------
def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # files written under numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a state dict of arrays never needs."""


class _ArraysOnly(pickle.Unpickler):
    """Resolves only the globals that rebuild dicts and numpy arrays; any other is refused."""

    def find_class(self, module: str, name: str) -> Any:
        make = _ALLOWED.get((module, name))
        if make is None:
            raise _Refused(f"the pickle would call {module}.{name}")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("the pickle refers to external objects")


def read_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """`{tensor name: array}` of a Paddle state-dict file; a `CheckpointError` (one line, naming
    the file) for a missing, damaged or crafted file, or one that holds anything but arrays."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f).load()
    except _Refused as e:
        raise CheckpointError(f"{path}: refused, not a plain Paddle state dict: {e}") from None
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, ValueError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable .pdparams file ({type(e).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a Paddle state dict (a pickled {type(data).__name__}, expected a dict "
                              f"of arrays)")
    arrays = {}
    for key, value in data.items():
        if key == STRUCTURE_KEY:
            continue
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}"
                                  f"{f' of {value.dtype}' if isinstance(value, np.ndarray) else ''}, "
                                  f"expected a numeric array")
        arrays[key] = value
    return arrays


# ---- the name of each of our tensors in PaddleDetection's network -------------------------
def _conv_bn(ours: str, paddle: str, conv: str, bn: str) -> dict[str, str]:
    names = {f"{ours}.conv.weight": f"{paddle}.{conv}.weight"}
    names.update({f"{ours}.bn.{a}": f"{paddle}.{bn}.{b}" for a, b in _BN.items()})
    return names


def _conv(ours: str, paddle: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{paddle}.weight", f"{ours}.bias": f"{paddle}.bias"}


def _dp(ours: str, paddle: str) -> dict[str, str]:
    """CSP-PAN's depthwise + pointwise pair: Paddle keeps both convs and BNs in one layer."""
    return {**_conv_bn(f"{ours}.dw", paddle, "dwconv", "bn1"), **_conv_bn(f"{ours}.pw", paddle, "pwconv", "bn2")}


_DS_PARTS = {"dw1": "_conv_dw_1", "linear1": "_conv_linear_1", "pw2": "_conv_pw_2", "dw2": "_conv_dw_2",
             "linear2": "_conv_linear_2", "dw_mv1": "_conv_dw_mv1", "pw_mv1": "_conv_pw_mv1"}
_ES_PARTS = {"pw": "_conv_pw", "dw": "_conv_dw", "linear": "_conv_linear"}


def backbone_names(prefix: str = "backbone.") -> dict[str, str]:
    """Our ESNet's tensor names (with the `backbone.` of `PicoDet`) -> Paddle's, under `prefix`."""
    names = _conv_bn("backbone.stem.conv", f"{prefix}_conv1", "_conv", "_batch_norm")
    index_in_stage = 0
    for i in range(NUM_BLOCKS):
        index_in_stage = 0 if block_is_downsample(i) else index_in_stage + 1
        paddle = f"{prefix}{block_stage(i) + 2}_{index_in_stage + 1}"
        ours = f"backbone.blocks.{i}"
        parts = _DS_PARTS if block_is_downsample(i) else _ES_PARTS
        for part, paddle_part in parts.items():
            names.update(_conv_bn(f"{ours}.{part}", f"{paddle}.{paddle_part}", "_conv", "_batch_norm"))
        names.update(_conv(f"{ours}.se.reduce", f"{paddle}._se.conv1"))
        names.update(_conv(f"{ours}.se.expand", f"{paddle}._se.conv2"))
    return names


def paddle_names(arch: Arch) -> dict[str, str]:
    """Every weight and BN statistic of `build_model(arch)` -> its name in PaddleDetection."""
    names = backbone_names()
    for i in range(3):
        names.update(_conv_bn(f"neck.trans.{i}", f"neck.conv_t.convs.{i}", "conv", "bn"))
    for ours, paddle in (("top_down", "top_down_blocks"), ("bottom_up", "bottom_up_blocks")):
        for i in range(2):
            o, p = f"neck.{ours}.{i}", f"neck.{paddle}.{i}"
            for part in ("main_conv", "short_conv", "final_conv"):
                names.update(_conv_bn(f"{o}.{part}", f"{p}.{part}", "conv", "bn"))
            names.update(_conv_bn(f"{o}.bottleneck_conv", f"{p}.blocks.0.conv1", "conv", "bn"))
            names.update(_dp(f"{o}.bottleneck_dp", f"{p}.blocks.0.conv2"))
    for i in range(2):
        names.update(_dp(f"neck.downsample.{i}", f"neck.downsamples.{i}"))
    names.update(_dp("neck.extra_in", "neck.first_top_conv"))
    names.update(_dp("neck.extra_out", "neck.second_top_conv"))
    for level in range(len(STRIDES)):
        for j in range(arch.head_convs):
            for k, kind in enumerate(("dw", "pw")):
                names.update(_conv_bn(f"head.towers.{level}.{2 * j + k}", f"head.conv_feat.cls_conv_{kind}{level}.{j}",
                                      "conv", "norm"))
        names.update(_conv(f"head.outputs.{level}", f"head.head_cls{level}"))
    return names


def _unused_paddle_tensor(key: str, value: np.ndarray) -> str | None:
    """Why a Paddle tensor without counterpart may be dropped, or None when it may not."""
    if key in {f"head.p{i + 3}_feat.scale_reg" for i in range(len(STRIDES))} and value.shape == (1,):
        return "a ScaleReg factor that PicoHead never applies"
    if key == PROJECT_KEY and np.array_equal(value, np.arange(REG_MAX + 1, dtype=value.dtype)):
        return "the fixed distribution projection [0..reg_max]"
    return None


# ---- the import ----------------------------------------------------------------------------
@dataclass
class Imported:
    """What `import_paddle` made of a file: the state dict and meta of the checkpoint to write,
    and what was dropped (name -> why)."""

    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    dropped: dict[str, str] = field(default_factory=dict)


def _num_classes(arrays: Mapping[str, np.ndarray], path: Path) -> int:
    weight = arrays.get("head.head_cls0.weight")
    if weight is None or weight.ndim != 4 or weight.shape[0] <= 4 * (REG_MAX + 1):
        shape = None if weight is None else tuple(weight.shape)
        raise CheckpointError(f"{path}: tensor 'head.head_cls0.weight' is {'missing' if shape is None else shape}: "
                              f"not a legacy PicoDet with a shared cls/reg head (use --backbone-only for an ESNet)")
    return int(weight.shape[0]) - 4 * (REG_MAX + 1)


def _classes(num_classes: int, class_names: Sequence[str] | None, path: Path) -> tuple[list[str], list[int]]:
    """(names, category ids): COCO's for an 80-class model, else the names given (ids 1..N)."""
    if class_names is None:
        if num_classes != len(COCO_CATEGORIES):
            raise UserError(f"{path} predicts {num_classes} classes, not COCO's {len(COCO_CATEGORIES)}: name them "
                            f"with --class-names NAME[,NAME...]")
        return [n for _, n in COCO_CATEGORIES], [i for i, _ in COCO_CATEGORIES]
    if len(class_names) != num_classes:
        raise UserError(f"--class-names: {len(class_names)} names for the {num_classes} classes {path} predicts")
    return list(class_names), list(range(1, num_classes + 1))


def import_paddle(path: str | Path, arch: Arch, *, backbone_only: bool = False,
                  class_names: Sequence[str] | None = None, ignore: Sequence[str] = (),
                  arch_name: str | None = None) -> Imported:
    """Map every tensor of a legacy PicoDet (or ESNet) `.pdparams` file onto `build_model(arch)`.

    Refuses (`CheckpointError`, one line naming the tensor) a tensor the network needs and the
    file lacks, a tensor of the file that maps onto nothing (unless its name starts with one of
    `ignore`, such as the classifier of an ImageNet-trained ESNet), and a shape that differs.
    `class_names`: the classes of a model that is not COCO's 80.
    """
    from .engine.trained import classes_meta

    path = Path(path)
    arch_name = arch_name or arch.key()
    arrays = read_pdparams(path)
    dropped: dict[str, str] = {}
    if backbone_only:
        prefix = "backbone." if any(k.startswith("backbone.") for k in arrays) else ""
        names = backbone_names(prefix)
        num_classes = 1  # the head is not taken; any size builds the backbone
        if prefix:
            for key in arrays:
                if not key.startswith(prefix):
                    dropped[key] = "the detector's neck or head (--backbone-only)"
    else:
        names = paddle_names(arch)
    wanted = set(names.values())
    found = sum(k in arrays for k in wanted)
    if found < len(wanted) // 2:
        example = next((k for k in arrays if k not in wanted and k not in dropped), None)
        raise CheckpointError(f"{path}: holds another model, not a legacy {'ESNet' if backbone_only else 'PicoDet'}: "
                              f"{found} of the {len(wanted)} tensors {arch_name} needs are in it"
                              + (f" (it has e.g. {example!r})" if example else ""))
    if not backbone_only:
        num_classes = _num_classes(arrays, path)
    own = build_model(arch, num_classes).state_dict()
    state: dict[str, torch.Tensor] = {}
    for ours, paddle in names.items():
        if paddle not in arrays:
            raise CheckpointError(f"{path}: lacks tensor {paddle!r}, which {arch_name} needs (for {ours})")
        value = arrays[paddle]
        if tuple(value.shape) != tuple(own[ours].shape):
            raise CheckpointError(f"{path}: tensor {paddle!r} has shape {tuple(value.shape)}, {arch_name} needs "
                                  f"{tuple(own[ours].shape)} (for {ours}): the file holds another size of network")
        state[ours] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    for key, value in arrays.items():
        if key in wanted or key in dropped:
            continue
        reason = None if backbone_only else _unused_paddle_tensor(key, value)
        if reason is None and any(key.startswith(p) for p in ignore):
            reason = "--ignore"
        if reason is None:
            raise CheckpointError(f"{path}: tensor {key!r} {tuple(value.shape)} maps onto nothing in {arch_name}: "
                                  f"the file holds another model (--ignore PREFIX drops such tensors on purpose, "
                                  f"e.g. a classifier)")
        dropped[key] = reason
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):  # BN step counters: Paddle keeps none
            state[key] = value
    if backbone_only:
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = {"file": str(path), "format": FORMAT_NAME, "sha256": digest, "backbone_only": backbone_only}
    if backbone_only:
        meta = {"kind": "backbone", "arch": arch.to_dict(), "input_size": arch.input_size, "version": __version__}
    else:
        names_, ids = _classes(num_classes, class_names, path)
        meta = classes_meta(arch, names_, ids, preprocessing=PADDLE_EVAL_PREPROCESSING)
    meta["imported_from"] = source
    return Imported(state=state, meta=meta, dropped=dropped)


def check_out_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".pt", ".pth"):
        raise UserError(f"--out {out}: a model file ends in .pt")
    return out


def write_imported(imported: Imported, out: str | Path) -> Path:
    """Write the model file (the project's checkpoint format, loadable with weights_only=True)."""
    out = check_out_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, imported.state, imported.meta)
    return out
