"""Processes under `torchrun`: rank, world size, device, and the few collectives training needs.

A plain `python`/`nas` run is world size 1 and never touches `torch.distributed`. Under
torchrun (`WORLD_SIZE` set) the process group is initialised from the environment (env://):
NCCL on CUDA, gloo on CPU; each process drives the GPU `LOCAL_RANK`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import UserError

T = TypeVar("T")
# Rank 0 evaluates while the others wait at a barrier; evaluation of a large set on a CPU
# can outlast the default 10-30 minute collective timeout.
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


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without one is a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to this process")
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


def on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and give every rank its result (or rank 0's `UserError`, so that a
    bad path stops every process with the same one line instead of leaving them waiting)."""
    result: Any = None
    if info.is_main:
        try:
            result = ("ok", fn())
        except UserError as e:
            result = ("error", e)
    if info.enabled:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    if result[0] == "error":
        raise result[1]
    return result[1]


def all_reduce_mean(info: DistInfo, values: list[float]) -> list[float]:
    """The mean over processes of each value (identity for one process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()
