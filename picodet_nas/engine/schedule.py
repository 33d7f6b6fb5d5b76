"""Learning rate per iteration: linear warm-up, then cosine.

As PaddleDetection builds it (LinearWarmup + CosineDecay): during the first `warmup_iters`
iterations the LR is `peak * (start * (1 - i / W) + i / W)`; after that it is the cosine
`peak * 0.5 * (1 + cos(pi * i / (cosine_epochs * iters_per_epoch)))` at the global iteration
`i` (the warm-up iterations count towards the cosine). The LR is a pure function of the
iteration, so a resumed run needs only its step counter to be back on schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    peak_lr: float
    iters_per_epoch: int
    cosine_epochs: int
    warmup_iters: int = 300
    warmup_start: float = 0.1

    @property
    def horizon(self) -> int:
        """Iterations of the whole cosine (max epochs x iterations per epoch)."""
        return self.cosine_epochs * self.iters_per_epoch

    def warmup_factor(self, step: int) -> float:
        alpha = step / self.warmup_iters
        return self.warmup_start * (1 - alpha) + alpha

    def __call__(self, step: int) -> float:
        if step < self.warmup_iters:
            return self.peak_lr * self.warmup_factor(step)
        progress = min(step, self.horizon) / self.horizon
        return self.peak_lr * 0.5 * (1 + math.cos(math.pi * progress))
