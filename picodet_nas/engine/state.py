"""Random-number-generator states as plain data, so that checkpoints stay loadable with
`torch.load(weights_only=True)` (numpy's state holds an ndarray, which that loader refuses);
seeding; deterministic kernels."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# cuBLAS is deterministic only with a fixed workspace: 8 buffers of 4096 KiB per handle.
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic() -> None:
    """Ask for deterministic kernels for the rest of the process, so that a run (and its resume)
    repeats bit for bit on a GPU as it does on a CPU: `torch.use_deterministic_algorithms` (an
    operation without a deterministic kernel then raises instead of varying), cuDNN's
    deterministic algorithms without autotuning, and cuBLAS's fixed workspace (read when cuBLAS
    starts, so call this before any CUDA matrix product; a value already set is kept)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
