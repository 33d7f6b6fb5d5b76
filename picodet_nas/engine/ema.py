"""Cycle-EMA of the whole state dict (PaddleDetection ModelEMA).

* The average starts at zeros, BN running statistics included.
* Every iteration, with `t` the updates since the last reset:
  `d = min(decay, (1 + t) / (warmup + t))`, `ema = d * ema + (1 - d) * theta`.
* At each epoch end the weights to evaluate and save are the bias-corrected
  `ema / (1 - d_last ** t)` (d_last: the most recent `d`); then the epoch counter advances and,
  on reaching `cycle_epochs`, the average resets to zeros (that epoch's weights still come
  from the pre-reset average). So the final model averages only the last cycle's epochs.

Integer buffers (BN `num_batches_tracked`) cannot be averaged; the averaged state takes them
from the model as they are. With `average_buffers=False` the BN running statistics are not
averaged either but taken from the model: an average of running statistics is not the
statistics of the averaged weights (the reason SWA recomputes them), so a model trained that
way should have its statistics recomputed for the averaged weights (`picodet_nas.bn_stats`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


class CycleEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: int = 10, cycle_epochs: int = 40,
                 average_buffers: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.cycle_epochs = cycle_epochs
        buffers = {k for k, _ in model.named_buffers()}
        self.shadow = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in model.state_dict().items()
                       if v.is_floating_point() and (average_buffers or k not in buffers)}
        self.step = 0
        self.last_decay = 0.0
        self.epoch = 0

    def reset(self) -> None:
        for v in self.shadow.values():
            v.zero_()
        self.step = 0
        self.last_decay = 0.0
        self.epoch = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.step) / (self.warmup + self.step))
        state = model.state_dict()
        for k, v in self.shadow.items():
            v.mul_(d).add_(state[k].detach().float(), alpha=1 - d)
        self.last_decay = d
        self.step += 1

    @torch.no_grad()
    def averaged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The bias-corrected average as a state dict of `model` (copies, the model's dtypes)."""
        state = model.state_dict()
        if self.step == 0:
            return {k: v.detach().clone() for k, v in state.items()}
        correction = 1 - self.last_decay ** self.step
        return {k: (self.shadow[k] / correction).to(v.dtype) if k in self.shadow else v.detach().clone()
                for k, v in state.items()}

    def end_epoch(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The epoch's weights (the bias-corrected average); then count the epoch, resetting
        the average at the end of a cycle. As Paddle's `ModelEMA.apply`, an average that has
        seen no update yet returns the model's weights and counts no epoch."""
        weights = self.averaged(model)
        if self.step == 0:
            return weights
        self.epoch += 1
        if self.cycle_epochs > 0 and self.epoch == self.cycle_epochs:
            self.reset()
        return weights

    # ---- checkpointing --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()},
                "step": self.step, "last_decay": self.last_decay, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in self.shadow.items():
            v.copy_(state["shadow"][k])
        self.step = int(state["step"])
        self.last_decay = float(state["last_decay"])
        self.epoch = int(state["epoch"])
