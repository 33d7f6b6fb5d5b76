"""The weight-sharing supernet of a search space: the largest PicoDet of the space, built of
sliceable layers, that runs any subnet of the space with the corresponding slice of its weights.

Elastic dimensions (all those a space may search):

* backbone: per ES block, the mid width (`Arch.mid_channels`, from the channel ratio) and the
  depthwise kernel (the centre of the largest kernel);
* neck width `neck_channels`: every neck conv, the head towers and the inputs of the head
  output convs;
* head depth `head_convs`: the first `d` depthwise + pointwise repeats of each level's tower;
* input size: the network is fully convolutional; the caller feeds images of `arch.input_size`.

The supernet is `picodet_nas.models.PicoDet` itself, built for the largest architecture of
`SLICEABLE` layers: the same blocks, module tree and parameter names, so `Supernet.state_dict()`
loads into `build_model(space.largest())` unchanged, and the weights of a subnet sit at the same
keys as in `build_model(arch)`. `extract(arch)` returns exactly that static network, carrying
the sliced weights and BN running statistics.

Typical use (one training step; `SubnetSampler` gives the same archs on every DDP rank)::

    for arch in sampler.archs_for_step(step):
        outs = supernet(images_at(arch.input_size), arch)
        loss(*flatten_outputs(outs, num_classes), ...).backward()   # gradients accumulate
    optimizer.step(); optimizer.zero_grad()

With `per_depth` ("outputs" or "all") the head keeps parts of its own for every shallower
depth `d` (`head.shallow_outputs.<d>`, and `head.shallow_towers.<d>` with "all", beside the full
depth's `head.outputs` and `head.towers`): a subnet of depth `d` is extracted with its own parts
at the static network's keys. "none" (the default) shares every head weight between depths.

Only the active slices receive gradient; layers a subnet does not use at all (head tower
repeats beyond its depth) get none, so DDP needs `find_unused_parameters=True`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from picodet_nas.arch import Arch
from picodet_nas.checkpoint import apply_state
from picodet_nas.models.detector import PicoDet, build_model
from picodet_nas.space import SearchSpace

from .dynamic import SLICEABLE, active_state_dict


class Supernet(PicoDet):
    """The largest network of `space` with elastic layers; runs any architecture of the space.

    `set_active(arch)` (or `forward(x, arch)`) chooses the subnet; `forward` returns the raw
    per-level outputs of `PicoDet.forward`, so `flatten_outputs`, the losses and the
    post-processing apply unchanged. Weights start as those of `build_model(space.largest())`
    (the builder's initialisation), and the largest architecture is active after construction
    (every sliceable layer starts at its largest). `arch` is the active architecture.
    """

    def __init__(self, space: SearchSpace, num_classes: int = 80, per_depth: str = "none"):
        largest = space.largest()
        super().__init__(largest, num_classes, SLICEABLE, per_depth=per_depth)
        self.space = space
        self.per_depth = per_depth
        # The static builder's initialisation; the load refuses any key the supernet lacks, so the
        # trees must match (the per-depth parts, which the static network lacks, start as copies
        # of its own).
        static = build_model(largest, num_classes).state_dict()
        copies = {}
        for depth in (d for d in space.choices.get("head_convs", ()) if d < largest.head_convs):
            self.set_active(largest.replace(head_convs=depth))
            copies.update({self.source_key(k): v for k, v in static.items()
                           if self.source_key(k) != k and self._runs(k, depth)})
        self.set_active(largest)
        # (per-depth parts of depths the space does not have keep their constructor's values)
        self.load_state_dict({**self.state_dict(), **static, **copies})

    @staticmethod
    def _runs(key: str, depth: int) -> bool:
        """Whether a head of depth `depth` has the static key `key` (tower repeats beyond it: no)."""
        if not key.startswith("head.towers."):
            return True
        return int(key.split(".")[3]) < 2 * depth  # head.towers.<level>.<layer>.

    @classmethod
    def for_state(cls, space: SearchSpace, num_classes: int, state: Mapping[str, Any]) -> "Supernet":
        """The supernet whose module tree `state` (a saved `state_dict()`) was written from: with
        the per-depth head parts it holds."""
        per_depth = ("all" if any(k.startswith("head.shallow_towers.") for k in state) else
                     "outputs" if any(k.startswith("head.shallow_outputs.") for k in state) else "none")
        return cls(space, num_classes, per_depth=per_depth)

    def set_active(self, arch: Arch) -> None:
        """Make `arch` the active subnet; a `SpaceError` if it is not in the space."""
        if arch == self.arch:
            return
        self.space.encode(arch)
        super().set_active(arch)

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> list[torch.Tensor]:
        if arch is not None:
            self.set_active(arch)
        return super().forward(x)

    def active_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of `build_model(self.arch)` holding the active slice of every weight
        and BN statistic (copies); the head repeats beyond the subnet's depth are left out."""
        state = active_state_dict(self)
        if self.per_depth == "none":
            return state
        depth, own, replaced = self.arch.head_convs, {}, []
        for part in self._own_parts():
            prefix = f"head.shallow_{part}.{depth}."
            own.update({f"head.{part}.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)})
            replaced.append(f"head.{part}.")
        return {**{k: v for k, v in state.items() if not k.startswith(("head.shallow_", *replaced))}, **own}

    def _own_parts(self) -> tuple[str, ...]:
        """The head parts the active depth has of its own."""
        if self.per_depth == "none" or self.arch.head_convs == self.space.largest().head_convs:
            return ()
        return ("towers", "outputs") if self.per_depth == "all" else ("outputs",)

    def source_key(self, key: str) -> str:
        """The supernet state-dict key that the active subnet's `key` is sliced from."""
        for part in self._own_parts():
            if key.startswith(f"head.{part}."):
                return f"head.shallow_{part}.{self.arch.head_convs}.{key.removeprefix(f'head.{part}.')}"
        return key

    def extract(self, arch: Arch) -> PicoDet:
        """The static `build_model(arch, num_classes)` carrying this supernet's weights and BN
        running statistics for `arch` (copies), on the supernet's device, in its train/eval mode.
        Makes `arch` active."""
        self.set_active(arch)
        p = next(self.parameters())
        model = build_model(arch, self.num_classes).to(device=p.device, dtype=p.dtype)
        model.load_state_dict(self.active_state_dict())  # strict: same keys and shapes as the builder
        return model.train(self.training)

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        """What a supernet checkpoint records beside `state_dict()` (plain data)."""
        return {"kind": "supernet", "space": self.space.ref(), "num_classes": self.num_classes,
                "head_per_depth": self.per_depth}

    def load_checkpoint_state(self, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: str) -> None:
        """Load weights saved with `checkpoint_meta()`; a `SpaceError`/`CheckpointError` (one
        line, naming `source`) when they belong to another space or network."""
        self.space.check_fingerprint((meta.get("space") or {}).get("fingerprint"), f"{source}: supernet checkpoint")
        apply_state(self, state, source)
