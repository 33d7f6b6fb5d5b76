"""How training goes along: each epoch's progress bar (with the step's figures, images/s and
the time left), the same figures in the log every few steps, and the one-time estimate of the
training time left that a session logs once it has timed a few steps."""

from __future__ import annotations

import logging
import sys
import time
from typing import Mapping

import torch
from tqdm import tqdm

from ..utils.tensorboard import ScalarLog

ESTIMATE_STEPS = (2, 10)  # steps timed for the duration estimate: from the end of the 2nd to the end of the 10th
CPU_WARN_S = 3 * 3600  # a CPU run expected to train longer than this gets a one-line warning


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class DurationEstimate:
    """Once per session, after its first ESTIMATE_STEPS[1] steps: the training time left, from
    the pace of the steps after the first ESTIMATE_STEPS[0] (which carry start-up costs); on a
    CPU, a warning with the flags that make the run practical when it exceeds CPU_WARN_S.
    Training goes on either way."""

    def __init__(self, device: torch.device, log: logging.Logger):
        self.device, self.log = device, log
        self._steps, self._t0 = 0, 0.0

    def step_done(self, steps_left: int) -> None:
        """Called after every step of the session, with the number of training steps still to run."""
        first, last = ESTIMATE_STEPS
        self._steps += 1
        if self._steps > last:
            return
        if self._steps == first:
            self._t0 = time.perf_counter()
        elif self._steps == last:
            per_step = (time.perf_counter() - self._t0) / (last - first)
            seconds = per_step * steps_left
            self.log.info(f"expected training time: {fmt_duration(seconds)} for the {steps_left} steps left "
                          f"({per_step:.2f} s/step; evaluations not included)")
            if self.device.type == "cpu" and seconds > CPU_WARN_S:
                self.log.warning(f"on this CPU the training takes about {fmt_duration(seconds)}; a practical CPU "
                                 "run needs a smaller schedule (e.g. --epochs 20 --batch-size 8 --input-size 192 "
                                 "--lr 0.05, the quick start's scale) or a GPU (--device cuda); going on")


class EpochBar:
    """The progress bar of one epoch on stderr (tqdm leaves it out when stderr is no terminal;
    `enabled` False: none at all); every `log_interval`-th step also logs the step's figures
    at debug level and adds them to `scalars`. `images` counts the epoch's images so far."""

    def __init__(self, epoch: int, epochs: int, steps: int, log: logging.Logger, log_interval: int, *,
                 enabled: bool, scalars: ScalarLog | None = None):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.log, self.log_interval, self.scalars = log, log_interval, scalars
        self.images, self.t0 = 0, time.perf_counter()
        self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                        file=sys.stderr, disable=None if enabled else True)

    def step_done(self, i: int, images: int, stats: Mapping[str, float], global_step: int, steps_left: int) -> None:
        """After the epoch's step `i` (0-based) on `images` images (all ranks together)."""
        self.images += images
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / (i + 1) * steps_left
        self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in stats.items()},
                              "img/s": f"{self.images / elapsed:.1f}", "eta": fmt_duration(eta)}, refresh=False)
        self.bar.update()
        if (i + 1) % self.log_interval == 0:
            if self.scalars is not None:
                self.scalars.add("step", stats, global_step)
            self.log.debug(f"epoch {self.epoch + 1}/{self.epochs} step {i + 1}/{self.steps} (global {global_step}) "
                           + " ".join(f"{k} {v:.4f}" for k, v in stats.items())
                           + f" img/s {self.images / elapsed:.1f} eta {fmt_duration(eta)}")

    def close(self) -> None:
        self.bar.close()
