"""Checkpoints: plain state_dicts plus metadata, loadable with `torch.load(weights_only=True)`
and written atomically (temporary file, then rename)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError
from .utils.io import atomic_torch_save

FORMAT = "picodet-nas/1"


def save_checkpoint(path: str | Path, model_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                    **extra: Any) -> None:
    """`meta` holds plain data only (arch dict, num_classes, class names, fingerprints...)."""
    atomic_torch_save({"format": FORMAT, "meta": dict(meta), "model": dict(model_state), **extra}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a picodet-nas checkpoint (expected format {FORMAT!r})")
    return ckpt


def deployed_weights(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to use of a checkpoint: the EMA weights where a training checkpoint has them,
    else the model's."""
    return ckpt.get("ema") or ckpt["model"]


def check_meta(meta: Mapping[str, Any], source: str | Path, *, kind: str | None = None, needs: str = "") -> None:
    """A checkpoint fit for use, or a one-line `CheckpointError`: of `kind` when given (`needs`:
    what needs that kind, for the message) and recording its number of classes."""
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{source}: a {meta.get('kind')!r} checkpoint, not a {kind}"
                              + (f"; {needs}" if needs else ""))
    count = meta.get("num_classes")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise CheckpointError(f"{source}: the checkpoint's meta lacks num_classes")


def load_model_weights(path: str | Path, *, kind: str | None = None, needs: str = ""
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(`deployed_weights`, meta) of a checkpoint checked by `check_meta`."""
    ckpt = load_checkpoint(path)
    check_meta(ckpt["meta"], path, kind=kind, needs=needs)
    return deployed_weights(ckpt), ckpt["meta"]


def apply_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """`load_state_dict`, with a one-line error when the checkpoint is of another network."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "lacks" if missing else "has an unexpected"
        raise CheckpointError(f"{source}: checkpoint {what} parameter {key!r}: it belongs to another architecture")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: parameter {k!r} has shape {tuple(state[k].shape)}, the architecture needs "
                f"{tuple(v.shape)}: the checkpoint belongs to another architecture"
            )
    model.load_state_dict(state)
