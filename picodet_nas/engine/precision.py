"""Mixed precision: the dtype an `--amp` setting means on a device, and the autocast context
that runs a forward pass in it."""

from __future__ import annotations

import contextlib

import torch


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto': bf16 on a GPU that has it, else fp16; no mixed precision on a CPU."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Mixed precision on the device when `amp_dtype` is set; a no-op context otherwise."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
