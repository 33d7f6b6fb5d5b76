"""The weights a subnet inherits from a trained supernet, as the starting point of
`nas retrain --init supernet`; and the other way round, a pretrained network written into the
supernet it is a subnet of, as the starting point of `nas train-supernet --init model.pt`.

The supernet is rebuilt from its checkpoint alone (the space's definition is recorded in it by
`nas train-supernet`; checkpoints written before that are matched to `search_spaces/` by name),
its space's fingerprint is checked against the search result's, and `Supernet.extract(arch)`
gives exactly the static network `build_model(arch)` with the shared weights and BN statistics.
Every way this can go wrong (not a supernet, another space, an architecture outside it) is a
one-line `UserError`, raised before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from picodet_nas.arch import Arch
from picodet_nas.checkpoint import load_model_weights
from picodet_nas.errors import CheckpointError, SpaceError
from picodet_nas.space import SearchSpace, load_space

from .supernet import Supernet

if TYPE_CHECKING:
    from picodet_nas.engine.pretrained import Pretrained


def checkpoint_space(meta: Mapping[str, Any], source: str | Path) -> SearchSpace:
    """The search space a supernet checkpoint was trained on, checked against its fingerprint."""
    ref = meta.get("space") or {}
    definition = meta.get("space_definition")
    if definition is not None:
        space = SearchSpace.from_dict(definition, source=f"{source}: space_definition")
    else:
        try:
            space = load_space(str(ref.get("name")))
        except SpaceError:
            raise CheckpointError(f"{source}: the checkpoint does not record its search space and search_spaces/ "
                                  f"has none named {ref.get('name')!r}") from None
    space.check_fingerprint(ref.get("fingerprint"), f"{source}: supernet checkpoint")
    return space


def inherited_weights(checkpoint: str | Path, arch: Arch, *, space_fingerprint: str | None = None,
                      arch_source: str = "the architecture") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict of `build_model(arch)` holding the supernet's weights, the checkpoint's meta).

    space_fingerprint: the space the architecture was searched in (best.yaml's `space`); the
                       supernet must have been trained on that very space.
    The input size does not change the weights (the network is fully convolutional), so an
    architecture retrained at another input size than its space's still inherits them.
    """
    state, meta = load_model_weights(checkpoint, kind="supernet",
                                     needs="--init supernet needs the supernet.pt written by nas train-supernet")
    ref = meta.get("space") or {}
    if space_fingerprint is not None and ref.get("fingerprint") != space_fingerprint:
        raise SpaceError(f"{checkpoint} was trained on space {ref.get('name')!r} (fingerprint "
                         f"{ref.get('fingerprint')}) but {arch_source} was searched in a space with fingerprint "
                         f"{space_fingerprint}: the supernet must be the one the search used")
    space = checkpoint_space(meta, checkpoint)
    probe = arch if arch.input_size in space.input_sizes else arch.replace(input_size=space.input_sizes[0])
    try:
        space.encode(probe)
    except SpaceError as e:
        raise SpaceError(f"{arch_source} is not a subnet of the supernet {checkpoint}: {e}") from None
    supernet = Supernet.for_state(space, meta["num_classes"], state)
    supernet.load_checkpoint_state(state, meta, str(checkpoint))
    return supernet.extract(probe).state_dict(), dict(meta)


def pretrained_subnet(space: SearchSpace, pre: "Pretrained") -> Arch:
    """The subnet of `space` that a model file's weights fill: a detector's own architecture,
    or, for a backbone alone, the largest network with that backbone's channel ratios and kernels."""
    largest = space.largest()
    if pre.backbone_only:
        if pre.arch.scale != largest.scale:
            raise SpaceError(f"{pre.path} holds an ESNet of scale {pre.arch.scale:g}; the space {space.name!r} "
                             f"has scale {largest.scale:g}")
        arch = largest.replace(channel_ratio=pre.arch.channel_ratio, kernel_size=pre.arch.kernel_size)
    else:
        arch = pre.arch
    probe = arch if arch.input_size in space.input_sizes else arch.replace(input_size=largest.input_size)
    try:
        space.encode(probe)
    except SpaceError as e:
        raise SpaceError(f"{pre.path}: its network is not a subnet of the space {space.name!r}: {e}") from None
    return probe


def embed_weights(supernet: Supernet, arch: Arch, state: Mapping[str, torch.Tensor]) -> None:
    """Write `state`, a state dict of `build_model(arch)`, into the slices of the supernet's
    weights and BN statistics that `arch` runs on, so that `supernet.extract(arch)` gives back
    exactly `state`; the rest of the supernet is left as it is.

    Which element of the supernet each element of a subnet tensor comes from is read off
    `active_state_dict` itself: the supernet's tensors are filled with their own flat indices,
    the subnet's slice of them is taken, and the values are scattered to the indices found.
    """
    own = {k: v.detach().clone() for k, v in supernet.state_dict().items()}
    floats = {k for k, v in own.items() if v.is_floating_point()}
    assert all(own[k].numel() <= 2 ** 24 for k in floats), "indices must be exact in float32"
    index = {k: torch.arange(own[k].numel(), dtype=own[k].dtype).reshape(own[k].shape) for k in floats}
    previous = supernet.arch
    supernet.load_state_dict({**own, **index})
    supernet.set_active(arch)
    where = supernet.active_state_dict()
    for key, value in state.items():
        source = supernet.source_key(key)
        if source in floats:
            own[source].view(-1)[where[key].reshape(-1).round().long()] = value.reshape(-1).to(own[source].dtype)
    supernet.load_state_dict(own)
    supernet.set_active(previous)
