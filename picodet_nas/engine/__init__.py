"""The training engine: one loop for static PicoDets and the supernet.

* `TrainConfig`: the recipe, published defaults (`TrainConfig.for_arch`).
* `Trainer`: the loop, checkpoints (`last.pt`, `best.pt`), `metrics.csv`, exact resume, DDP.
* `StepPlan` / `NetworkPass` / `StaticPlan`: which network(s) each step trains.
* `LRSchedule`, `CycleEMA`, `build_optimizer`: the recipe's parts, usable on their own.
* `evaluate_coco`: COCO numbers of a model on a dataset.
* `retrain` (`engine.retrain`) and `evaluate_checkpoint` (`engine.eval_checkpoint`): what
  `nas retrain` and `nas eval` run; `engine.sweep`: the Ray Tune sweep of `nas retrain --sweep N`.
"""

from .config import TrainConfig, multiscale_sizes
from .distributed import DistInfo, init_distributed
from .ema import CycleEMA
from .evaluate import evaluate_coco
from .optim import build_optimizer, split_decay
from .plan import NetworkPass, StaticPlan, StepPlan
from .run_record import FitResult
from .schedule import LRSchedule
from .trainer import Trainer

__all__ = [
    "CycleEMA",
    "DistInfo",
    "FitResult",
    "LRSchedule",
    "NetworkPass",
    "StaticPlan",
    "StepPlan",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "evaluate_coco",
    "init_distributed",
    "multiscale_sizes",
    "split_decay",
]
