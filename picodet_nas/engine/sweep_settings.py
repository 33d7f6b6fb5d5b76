"""What `nas retrain ARCH --sweep N` searches: its settings (`SweepSettings`), Tune's search
space around the recipe, and the recipes of a trial and of the final training.

The learning rate is drawn log-uniformly within a factor 4 of the recipe's peak LR for this
batch (or of `--lr`), the weight decay likewise around the recipe's 4e-5 (or the given one);
with several `--sweep-epochs` values the epochs are a choice among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UserError
from .config import TrainConfig

SEARCH_FACTOR = 4.0  # each value is searched within [centre / 4, centre * 4], log-uniformly


@dataclass(frozen=True)
class SweepSettings:
    """What `--sweep N`, `--sweep-epochs`, `--sweep-threads` and `--address` ask for.

    epochs: None: trials run the final schedule's epochs; one value: every trial runs that
            many; several: the search picks among them (and the final training uses the pick).
    """

    trials: int
    epochs: tuple[int, ...] | None = None
    threads_per_trial: int = 1
    address: str | None = None
    grace_epochs: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: float = 2.0  # ASHA: a rung keeps the best 1/rf of the trials that reached it

    def __post_init__(self) -> None:
        epochs = self.epochs
        if isinstance(epochs, int):
            epochs = (epochs,)
        if epochs is not None:
            epochs = tuple(sorted(set(epochs)))
        object.__setattr__(self, "epochs", epochs)
        if not isinstance(self.trials, int) or self.trials < 1:
            raise UserError(f"--sweep must be a number of trials >= 1, got {self.trials!r}")
        if epochs is not None and (not epochs or any(not isinstance(e, int) or e < 1 for e in epochs)):
            raise UserError(f"--sweep-epochs must be positive integers, got {self.epochs!r}")
        if not isinstance(self.threads_per_trial, int) or self.threads_per_trial < 1:
            raise UserError(f"--sweep-threads must be an integer >= 1, got {self.threads_per_trial!r}")


def parse_epochs(text: str) -> tuple[int, ...]:
    """`--sweep-epochs 4` or `--sweep-epochs 2,4,8`."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UserError(f"--sweep-epochs expects a number of epochs or a comma-separated list, got {text!r}") from None
    if not values:
        raise UserError(f"--sweep-epochs expects a number of epochs or a comma-separated list, got {text!r}")
    return values


def search_space(cfg: TrainConfig, settings: SweepSettings) -> dict[str, Any]:
    """Tune's param_space: lr and weight decay log-uniform around the recipe's, epochs as a
    choice when several were given."""
    from ray import tune

    lr = cfg.peak_lr(1)
    wd = cfg.weight_decay if cfg.weight_decay > 0 else 4e-5
    space: dict[str, Any] = {"lr": tune.loguniform(lr / SEARCH_FACTOR, lr * SEARCH_FACTOR),
                             "weight_decay": tune.loguniform(wd / SEARCH_FACTOR, wd * SEARCH_FACTOR)}
    if settings.epochs is not None and len(settings.epochs) > 1:
        space["epochs"] = tune.choice(list(settings.epochs))
    return space


def trial_epochs(cfg: TrainConfig, settings: SweepSettings, params: Mapping[str, Any]) -> int:
    if "epochs" in params:
        return int(params["epochs"])
    return settings.epochs[0] if settings.epochs else cfg.epochs


def trial_config(cfg: TrainConfig, params: Mapping[str, Any], epochs: int) -> TrainConfig:
    """A trial's recipe: the run's, with the trial's values, a complete schedule of `epochs`
    and an evaluation after every epoch (ASHA compares trials epoch by epoch)."""
    return cfg.replace(lr=float(params["lr"]), weight_decay=float(params["weight_decay"]), epochs=epochs,
                       cosine_epochs=epochs, eval_interval=1)


def final_config(cfg: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The final training's recipe: the run's, with the chosen values (and epochs, if searched)."""
    changes: dict[str, Any] = {"lr": float(params["lr"]), "weight_decay": float(params["weight_decay"])}
    if "epochs" in params:
        changes.update(epochs=int(params["epochs"]), cosine_epochs=int(params["epochs"]))
    return cfg.replace(**changes)
