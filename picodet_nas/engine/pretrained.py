"""Starting a training from a model file (`--init model.pt`): a detector or a backbone alone,
such as `nas import-paddle` writes from PaddleDetection's official weights, or a `nas retrain`
model.

`read_pretrained` reads the file (a detector checkpoint of kind `picodet`, or a `backbone`
one); `initial_state` turns it into the complete state dict of the network to train, given
that network's own freshly initialised state:

* a detector of the same architecture (the input size may differ) gives every tensor; when
  the training data has other classes than the checkpoint (by name, in order), each level's
  output conv keeps its box-distribution rows and gets the fresh class rows: a new classifier
  on pretrained features and box regression;
* a backbone gives the backbone, which must be the same ESNet (scale, channel ratios,
  kernels); neck and head keep their fresh initialisation.

Anything else is refused in one line naming the file and the difference.

`InitialWeights` are what a retrain starts from instead of the builder's initialisation:
the slice of a supernet (`nas retrain --init supernet`) or such a model file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..arch import STRIDES, Arch
from ..checkpoint import deployed_weights, load_checkpoint
from ..data import CocoDetection
from ..data.classes import Classes, check_same_classes
from ..errors import ArchError, CheckpointError
from ..models import build_model
from .state import seed_everything
from .trained import arch_difference

BACKBONE_FIELDS = ("scale", "channel_ratio", "kernel_size")


@dataclass(frozen=True)
class Pretrained:
    """The weights of a model file and what they are: `class_names` is None for a backbone."""

    path: Path
    arch: Arch
    state: Mapping[str, torch.Tensor]
    class_names: Sequence[str] | None

    @property
    def backbone_only(self) -> bool:
        return self.class_names is None


def read_pretrained(path: str | Path) -> Pretrained:
    """A detector or backbone model file; a `CheckpointError` for anything else."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    meta: Mapping[str, Any] = ckpt["meta"]
    kind = meta.get("kind")
    if kind == "supernet":
        raise CheckpointError(f"{path}: a supernet checkpoint; start a subnet from it with --init supernet "
                              f"--supernet {path}")
    if kind not in ("picodet", "backbone"):
        raise CheckpointError(f"{path}: a {kind!r} checkpoint, expected a detector or a backbone model file")
    try:
        arch = Arch.from_dict(meta.get("arch"), source=f"{path}: arch")
    except (ArchError, TypeError) as e:
        raise CheckpointError(f"{path}: the recorded architecture is malformed ({e})") from None
    names = meta.get("class_names") if kind == "picodet" else None
    if kind == "picodet" and not isinstance(names, list):
        raise CheckpointError(f"{path}: checkpoint meta lacks class_names")
    return Pretrained(path=path, arch=arch, state=deployed_weights(ckpt), class_names=names)


def initial_state(pre: Pretrained, arch: Arch, own: Mapping[str, torch.Tensor], class_names: Sequence[str]
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict to load into the network of `arch`, whose fresh state is `own`; what was done,
    as log lines). `class_names`: the classes of the training data."""
    if pre.backbone_only:
        difference = arch_difference(pre.arch, arch, BACKBONE_FIELDS)
        if difference:
            raise CheckpointError(f"{pre.path} holds the backbone of another architecture (checkpoint vs given: "
                                  f"{difference})")
        state = dict(own)
        state.update({k: v for k, v in pre.state.items() if k.startswith("backbone.")})
        return state, [f"backbone from {pre.path}; neck and head freshly initialised"]
    difference = arch_difference(pre.arch, arch)
    if difference:
        raise CheckpointError(f"{pre.path} holds another architecture than the one to train (checkpoint vs given: "
                              f"{difference})")
    state = dict(pre.state)
    if list(pre.class_names) == list(class_names):
        return state, [f"every weight from {pre.path}, classifier included ({len(class_names)} classes)"]
    old, new = len(pre.class_names), len(class_names)
    for level in range(len(STRIDES)):
        for leaf in ("weight", "bias"):
            key = f"head.outputs.{level}.{leaf}"
            state[key] = torch.cat([own[key][:new], pre.state[key][old:]])
    return state, [f"weights from {pre.path}; fresh classifier: the checkpoint has {old} classes "
                   f"({_some(pre.class_names)}), the data {new} ({_some(class_names)}); the box-distribution "
                   f"outputs are kept"]


def _some(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(list(names)[:n]) + (", ..." if len(names) > n else "")


@dataclass(frozen=True)
class InitialWeights:
    """Weights a retrain starts from instead of the builder's initialisation: for
    `--init supernet`, the state dict of `build_model(arch)` the supernet's `extract` gives; for
    `--init model.pt`, a detector or backbone model file (`pretrained`), whose state dict
    `for_dataset` completes once the training data's classes are known."""

    state: Mapping[str, torch.Tensor]
    source: str  # where they come from, for messages and config.yaml
    classes: Classes | None = None  # the classes they were trained on, if known
    kind: str = "supernet"
    pretrained: Pretrained | None = None
    notes: tuple[str, ...] = ()  # what was taken from where, for the log

    def for_dataset(self, arch: Arch, dataset: CocoDetection, seed: int) -> "InitialWeights":
        """The complete weights to train `arch` on `dataset` from (a model file's classifier is
        replaced when the classes differ; the fresh parts are the builder's, seeded by `seed`).
        Inherited weights of other classes are refused: their head would predict other classes."""
        if self.pretrained is None:
            if self.classes is not None:
                check_same_classes(self.classes, Classes.of_dataset(dataset),
                                   "the inherited head would predict other classes; start from scratch "
                                   "(--init scratch) on this data")
            return self
        seed_everything(seed)
        own = build_model(arch, dataset.num_classes).state_dict()
        state, notes = initial_state(self.pretrained, arch, own, dataset.class_names)
        return replace(self, state=state, notes=tuple(notes), pretrained=None)
