"""SGD with PicoDet's weight-decay exemptions.

PaddleDetection puts `L2Decay(0)` on the BN scale and shift of ESNet and of the PicoHead
towers, so those get no weight decay; the CSP-PAN's BN parameters keep the global 4e-5, as do
every conv weight, the SE biases and the head output bias. The exemption goes by module type
and by part (`backbone.` / `head.` prefixes), which the static `PicoDet` and the `Supernet`
share, so both train with the same groups.
"""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_PARTS = ("backbone", "head")


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without), in `named_parameters` order."""
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module_name.split(".")[0] in NO_DECAY_PARTS:
            exempt.update(f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    decay, no_decay = [], []
    for name, _ in model.named_parameters():
        (no_decay if name in exempt else decay).append(name)
    return decay, no_decay


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD (momentum, no Nesterov) with two groups: decayed, and exempt BN (weight decay 0)."""
    decay, no_decay = split_decay(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "name": "decay"},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "name": "no_decay"},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
