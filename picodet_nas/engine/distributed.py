"""Processes under `torchrun`: rank, world size, device, the few collectives training needs,
and the conversion of a model's BN layers to SyncBatchNorm.

A plain `python`/`nas` run is world size 1 and never touches `torch.distributed`. Under
torchrun (`WORLD_SIZE` set) the process group is initialised from the environment (env://):
NCCL on CUDA, gloo on CPU; each process drives the GPU `LOCAL_RANK`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError

T = TypeVar("T")
# Ranks wait for rank 0 while it alone works: BN recalibration, pycocotools, checkpoint files.
# On a CPU with a large set these can outlast the default 10-30 minute collective timeout.
# A failure that one rank detects (a non-finite loss, a bad file on rank 0) is shared with
# every rank at once (`gather_floats`, `on_main`), so no rank waits for this timeout.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: "str | torch.device | None") -> str:
    """'auto' (or None) -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' (or 'cuda:N')
    without one is a user error."""
    device = "auto" if device is None else str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available to this process")
    return device


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group if there is one; returns this process's place in it."""
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method="env://",
                                timeout=COLLECTIVE_TIMEOUT)
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class PeerFailed(RuntimeError):
    """Another rank failed with an error that is not a `UserError` (a bug); its message names it."""


def on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and give every rank its result, or rank 0's exception: its
    `UserError`, so that a bad path stops every process with the same one line instead of
    leaving them waiting; any other exception stops rank 0 with its traceback and the other
    ranks with a `PeerFailed` naming it."""
    result: Any = None
    failure: BaseException | None = None
    if info.is_main:
        try:
            result = ("ok", fn())
        except UserError as e:
            result = ("error", e)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            result, failure = ("crash", f"rank 0 failed: {type(e).__name__}: {e}"), e
    if info.enabled:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    if failure is not None:
        raise failure
    if result[0] == "error":
        raise result[1]
    if result[0] == "crash":
        raise PeerFailed(result[1])
    return result[1]


def gather_to_main(info: DistInfo, obj: T) -> list[T] | None:
    """Every rank's `obj` (picklable), in rank order, on rank 0; None on the other ranks."""
    if not info.enabled:
        return [obj]
    out: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_floats(info: DistInfo, value: float) -> list[float]:
    """Every rank's `value`, in rank order, on every rank (one small all-reduce; NaN and
    infinities arrive as they are)."""
    if not info.enabled:
        return [float(value)]
    t = torch.zeros(info.world_size, dtype=torch.float64, device=info.device)
    t[info.rank] = value
    dist.all_reduce(t)  # the other ranks add exact zeros to each slot
    return t.tolist()


def non_finite_ranks(info: DistInfo, values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Every rank's first non-finite value of `values` (0.0 where all are finite), on every rank,
    and the ranks that have one."""
    gathered = gather_floats(info, next((v for v in values if not math.isfinite(v)), 0.0))
    return gathered, [r for r, v in enumerate(gathered) if not math.isfinite(v)]


def gradient_sync(net: nn.Module, last: bool):
    """Under DDP, the passes before a step's last one run under `no_sync`: their gradients
    accumulate locally and the last pass's backward all-reduces the sum, once per step."""
    if last or not isinstance(net, DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def broadcast_from_main(info: DistInfo, tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite `tensors` in place with rank 0's values (one broadcast per dtype); every rank
    passes the same tensors (names, shapes, dtypes) in the same order."""
    if not info.enabled:
        return
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1).to(info.device) for t in group])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in group:
            t.detach().copy_(flat[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()


def all_reduce_mean(info: DistInfo, values: list[float]) -> list[float]:
    """The mean over processes of each value (identity for one process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm layer replaced by a SyncBatchNorm (same parameters and
    buffers, so state dicts keep their keys). A BN subclass with behaviour of its own (the
    supernet's channel-slicing `DynamicBatchNorm2d`) would lose it in the conversion: refused."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    special = sorted({type(m).__name__ for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in plain})
    if special:
        raise UserError(f"--sync-bn: this model's BN layers ({', '.join(special)}) cannot become SyncBatchNorm; "
                        "leave --sync-bn out")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
