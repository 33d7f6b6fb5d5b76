"""The epoch-end work on an epoch's weights: BN recalibration and evaluation, when due.

Both run on a copy of the model made before DDP wraps it (DDP hooks must not be copied) and
before SyncBatchNorm replaces its BN layers (evaluation needs no synchronisation).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from .config import TrainConfig
from .distributed import DistInfo


class Evaluator(Protocol):
    """Scores a model holding the epoch's (EMA) weights; may change it freely (it is a copy).

    Called on every rank, all holding the same weights; under DDP it shares the work between
    them (e.g. `evaluate_coco` with `dist_info`) and returns the same numbers on every rank.
    """

    names: Sequence[str]  # the metric columns it returns, fixed for the run

    def __call__(self, model: nn.Module) -> Mapping[str, float]: ...


class EpochScoring:
    """Recalibrates (`calibrate`, rank 0) and evaluates (`evaluator`, every rank) the weights of
    the epochs that are due: every `eval_interval`-th and the last."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, dist_info: DistInfo, log: logging.Logger, *,
                 evaluator: Evaluator | None = None, calibrate: Callable[[nn.Module], None] | None = None):
        self.cfg, self.dist, self.log = cfg, dist_info, log
        self.evaluator, self.calibrate_fn = evaluator, calibrate
        wants_copy = evaluator is not None or calibrate is not None
        self.model = copy.deepcopy(model) if wants_copy else None

    def due(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval_interval == 0 or epoch + 1 == self.cfg.epochs

    @torch.no_grad()
    def calibrate(self, epoch: int, weights: dict[str, torch.Tensor]) -> None:
        """Recompute the BN statistics of the epoch's weights in place (rank 0, when due; the
        caller then shares rank 0's weights with every rank).

        Not in the BN-frozen epochs: there the weights were trained against the fixed running
        statistics, eval mode reproduces the training forward pass exactly, and recomputing them
        would break that (the README's BN-fidelity benchmark measures the loss)."""
        if self.calibrate_fn is None or not self.dist.is_main or not self.due(epoch):
            return
        if self.cfg.bn_freeze_epochs and epoch >= self.cfg.epochs - self.cfg.bn_freeze_epochs:
            return
        t0 = time.perf_counter()
        self.model.load_state_dict(weights)
        self.calibrate_fn(self.model)
        for name, buf in self.model.named_buffers():
            if name in weights:
                weights[name] = buf.detach().clone()
        self.log.debug(f"BN recalibration took {time.perf_counter() - t0:.1f} s")

    def evaluate(self, epoch: int, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The evaluator's numbers for the epoch's weights, on every rank (when due)."""
        if not (self.due(epoch) and self.evaluator is not None):
            return {}
        self.model.load_state_dict(weights)
        t0 = time.perf_counter()
        metrics = dict(self.evaluator(self.model))
        self.log.debug(f"evaluation took {time.perf_counter() - t0:.1f} s")
        return metrics
