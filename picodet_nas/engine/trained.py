"""A trained model file is all a user needs: what a retrain checkpoint records about its model,
and how `nas eval`, `nas predict`, `nas export` and `nas summary` rebuild the model from it.

`model_meta` is the meta of every retrain checkpoint (`model.pt`, `best.pt`, `last.pt`): the
architecture, with the input size it was trained and evaluated at; the classes and their
dataset category ids; the preprocessing and post-processing its numbers were computed with;
the training recipe; the package version. `load_trained_model` rebuilds the network from the
checkpoint alone; an architecture given besides it is checked against the recorded one, and a
difference is refused in one line that names both.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..arch import Arch, is_architecture, resolve_arch
from ..checkpoint import apply_state, check_meta, deployed_weights, load_checkpoint
from ..data import CocoDetection
from ..data.transforms import EVAL_PREPROCESSING, EVAL_RESIZE_FILTERS
from ..errors import ArchError, CheckpointError, UserError
from ..models import PicoDet, build_model
from ..postprocess import EVAL_NMS


def model_meta(arch: Arch, dataset: CocoDetection, recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint records so that its model can be used without the training data."""
    return classes_meta(arch, dataset.class_names, dataset.label_to_cat_id, recipe)


def classes_meta(arch: Arch, class_names: Sequence[str], label_to_cat_id: Sequence[int],
                 recipe: Mapping[str, Any] | None = None,
                 preprocessing: Mapping[str, Any] = EVAL_PREPROCESSING) -> dict[str, Any]:
    """`model_meta` for a model whose classes are given by name and category id."""
    meta = {"kind": "picodet", "arch": arch.to_dict(), "input_size": arch.input_size,
            "num_classes": len(class_names), "class_names": list(class_names),
            "label_to_cat_id": list(label_to_cat_id), "preprocessing": dict(preprocessing),
            "postprocess": asdict(EVAL_NMS), "version": __version__}
    if recipe is not None:
        meta["recipe"] = dict(recipe)
    return meta


def resize_filter(meta: Mapping[str, Any]) -> str:
    """The evaluation resize filter a checkpoint records (checkpoints that record none: Pillow's)."""
    value = (meta.get("preprocessing") or {}).get("resize_filter", "pillow")
    if value not in EVAL_RESIZE_FILTERS:
        raise CheckpointError(f"checkpoint preprocessing: resize_filter {value!r} is not one of "
                              f"{', '.join(EVAL_RESIZE_FILTERS)}")
    return value


def arch_difference(recorded: Arch, given: Arch, fields: Sequence[str] | None = None) -> str:
    """The `fields` (default: every field but the input size) in which two architectures
    differ, as 'field recorded vs given; ...'."""
    a, b = recorded.to_dict(), given.to_dict()
    fields = [k for k in a if k != "input_size"] if fields is None else fields
    return "; ".join(f"{k} {a[k]} vs {b[k]}" for k in fields if a[k] != b[k])


def checkpoint_arch(meta: Mapping[str, Any], weights: str | Path, arch_spec: str | Path | Arch | None = None,
                    input_size: int | None = None) -> Arch:
    """The checkpoint's architecture at `input_size` (default: the size it was trained at).

    arch_spec, when given, must describe the recorded architecture (its input size may differ:
    the recorded one is kept unless `input_size` says otherwise). Checkpoints that record no
    architecture need `arch_spec`, at its own input size."""
    recorded = meta.get("arch")
    if recorded is not None:
        try:
            recorded = Arch.from_dict(recorded)
        except (ArchError, TypeError, KeyError) as e:
            raise CheckpointError(f"{weights}: the recorded architecture is malformed ({e})") from None
    if arch_spec is None:
        if recorded is None:
            raise CheckpointError(f"{weights} records no architecture (written by an older version); name it: "
                                  f"ARCH --weights {weights}")
        arch = recorded
    else:
        given = resolve_arch(arch_spec)
        if recorded is not None:
            difference = arch_difference(recorded, given)
            if difference:
                raise CheckpointError(f"{weights} holds another architecture than {arch_spec} "
                                      f"(checkpoint vs given: {difference})")
        arch = recorded or given
    return resolve_arch(arch, input_size)


def read_trained(weights: str | Path, arch_spec: str | Path | Arch | None = None, input_size: int | None = None
                 ) -> tuple[Arch, dict[str, Any], dict[str, Any]]:
    """(architecture, meta, whole checkpoint) of a retrain checkpoint, without building the
    network; see `checkpoint_arch` for `arch_spec` and `input_size`. Refuses, in one line, a
    supernet checkpoint and one whose meta lacks the number of classes."""
    ckpt = load_checkpoint(weights)
    meta = ckpt["meta"]
    if meta.get("kind") == "supernet":
        raise CheckpointError(f"{weights}: a supernet checkpoint; retrain a subnet with `nas retrain` first")
    if meta.get("kind") == "backbone":
        raise CheckpointError(f"{weights}: holds a backbone only; train a detector from it with "
                              f"`nas retrain ARCH --init {weights}` or `nas train-supernet ... --init {weights}`")
    check_meta(meta, weights)
    return checkpoint_arch(meta, weights, arch_spec, input_size), meta, ckpt


def load_trained_model(arch_spec: str | Path | Arch | None, weights: str | Path, input_size: int | None = None
                       ) -> tuple[PicoDet, dict[str, Any], dict[str, Any]]:
    """The checkpoint's network with its weights (the EMA weights of a training checkpoint), in
    eval mode, with the checkpoint's meta and the whole checkpoint (`read_trained`)."""
    arch, meta, ckpt = read_trained(weights, arch_spec, input_size)
    model = build_model(arch, meta["num_classes"])
    apply_state(model, deployed_weights(ckpt), weights)
    return model.eval(), meta, ckpt


def model_and_weights(model: str, weights: str | None, command: str) -> tuple[str | None, str]:
    """(architecture or None, checkpoint) from a command's MODEL argument and `--weights`:
    `MODEL=CKPT` alone, or `MODEL=ARCH --weights CKPT` (then ARCH is checked against the checkpoint)."""
    if weights is not None:
        return model, weights
    if is_architecture(model):
        raise UserError(f"nas {command}: {model} is an architecture; give the checkpoint: nas {command} CKPT ... "
                        f"(or {model} --weights CKPT)")
    return None, model
