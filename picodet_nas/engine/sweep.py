"""`nas retrain ARCH --sweep N`: choose the learning rate and weight decay of a retrain with a
Ray Tune sweep, before the final training.

* Search: N trials. `OptunaSearch` (TPE, seeded with the run's seed) draws the learning rate
  log-uniformly within a factor 4 of the recipe's peak LR for this batch (or of `--lr`), and
  the weight decay log-uniformly within a factor 4 of the recipe's 4e-5 (or of the given
  one); with several `--sweep-epochs` values it also picks the epochs among them.
* Trials: each trains the architecture with the recipe and its values for its epochs, as a
  complete shorter schedule (the cosine follows the trial's epochs), evaluates the EMA
  weights after every epoch and reports mAP to Tune. The `ASHAScheduler` stops a trial whose
  mAP trails the others' at a rung (after 1, 2, 4... epochs).
* Choice: the best final mAP among the trials that ran their whole schedule (among all
  trials when none did), ties to the earlier trial. If the chosen trial's schedule is the
  final one (same settings but for the evaluation cadence), its weights are kept and become
  the run's model without a second training; otherwise the final training runs with the
  chosen values. Short trials (`--sweep-epochs` below `--epochs`) therefore cost N short
  trainings plus one full one; full-length trials cost N at most, fewer where ASHA stops them.

Outputs in the run directory: `sweep.csv` (one row per trial: values, final mAP, epochs run,
stopped early or not, status) and `trials/<trial>/` (train.log, metrics.csv). Ray Tune's own
experiment files go to a temporary folder that is removed afterwards: sweep.csv is the record.
A trial that fails (a learning rate that makes the training diverge) is a row with its error;
when every trial fails the command ends with the first error, in one line.

Ray (as `nas evolve`, `picodet_nas.utils.ray_session`): a private local instance without
dashboard by default, `--address` or RAY_ADDRESS joins a cluster, where every node needs the
data and the run directory at the same path. With `reuse_actors` a worker process runs trial
after trial and keeps the datasets it has loaded.

`engine.sweep_settings` holds the settings, the search space and the recipes it leads to;
`engine.sweep_trials` one trial, the table of trials and the choice; this module runs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..checkpoint import load_checkpoint
from ..utils.ray_session import RaySession, ray_address
from .config import TrainConfig
from .distributed import resolve_device
from .pretrained import InitialWeights
from .sweep_settings import SweepSettings, final_config, search_space, trial_config
from .sweep_trials import choose, train_trial, trial_name, trial_rows, write_sweep_csv

SWEEP_CSV = "sweep.csv"
TRIALS_DIR = "trials"
KEPT_FILES = ("last.pt", "best.pt")  # moved from the chosen trial into the run directory when it is kept


@dataclass
class SweepOutcome:
    config: TrainConfig  # the final training's recipe
    chosen: dict[str, Any]  # the chosen trial's sweep.csv row
    rows: list[dict[str, Any]]
    kept: Path | None  # the run's last.pt taken over from the chosen trial, or None: train again
    wall_time_s: float
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What config.yaml and metrics.json record about the sweep."""
        c = self.chosen
        return {"trials": len(self.rows), **self.counts, "wall_time_s": round(self.wall_time_s, 1),
                "chosen": {"trial": c["trial"], "lr": c["lr"], "weight_decay": c["weight_decay"], "epochs": c["epochs"],
                           "mAP": c["mAP"]},
                "kept_trial_model": self.kept is not None, "table": SWEEP_CSV}


@contextlib.contextmanager
def _quiet_tune():
    """Tune and Optuna print banners, tables, per-trial lines and the tracebacks of failed
    trials; the sweep logs one line per trial instead and records each failure's message in
    sweep.csv. Tune's legacy output engine with verbose=0 is silent (the new one prints its
    banner regardless), so it is selected for the length of the sweep."""
    import optuna

    tune_log = logging.getLogger("ray.tune")
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT"), optuna.logging.get_verbosity(), tune_log.level
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_log.setLevel(previous[2])
        optuna.logging.set_verbosity(previous[1])
        if previous[0] is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous[0]


def _keep_or_retrain(rows: list[dict[str, Any]], chosen: dict[str, Any], cfg: TrainConfig, settings: SweepSettings,
                     trials_dir: Path, run_dir: Path, log: logging.Logger) -> tuple[TrainConfig, Path | None]:
    """(the final recipe, the run's last.pt when the chosen trial's weights are kept). Trial
    checkpoints are removed either way (the logs and metrics.csv stay)."""
    searched = ("lr", "weight_decay") + (("epochs",) if settings.epochs and len(settings.epochs) > 1 else ())
    final = final_config(cfg, {k: chosen[k] for k in searched})
    ran = trial_config(cfg, chosen, chosen["epochs"])
    kept = None
    source = trials_dir / chosen["trial"]
    if chosen["status"] == "completed" and ran.replace(eval_interval=final.eval_interval) == final \
            and (source / "last.pt").is_file() and load_checkpoint(source / "last.pt").get("epoch") == ran.epochs:
        for name in KEPT_FILES:
            if (source / name).is_file():
                shutil.move(str(source / name), str(run_dir / name))
        shutil.copyfile(source / "metrics.csv", run_dir / "metrics.csv")
        kept, final = run_dir / "last.pt", ran
        log.info(f"{chosen['trial']} already trained the final schedule: its model is kept, no second training")
    for row in rows:
        for name in KEPT_FILES:
            (trials_dir / row["trial"] / name).unlink(missing_ok=True)
    return final, kept


def _trial_log(log: logging.Logger, total: int):
    """A Tune callback that writes one log line per finished trial (Tune itself is silenced)."""
    from ray import tune

    class TrialLog(tune.Callback):
        def __init__(self) -> None:
            self.done = 0

        def _line(self, trial, what: str) -> None:
            self.done += 1
            r, c = trial.last_result or {}, trial.config
            score = f"mAP {r['mAP']:.4f} after {r.get('epoch')} epoch(s)" if "mAP" in r else "no result"
            log.info(f"sweep {self.done}/{total}: {trial_name(trial)} (lr {c['lr']:.4g}, weight decay "
                     f"{c['weight_decay']:.3g}) {what}: {score}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "failed")

    return TrialLog()


def run_sweep(arch: Arch, data: str | Path, cfg: TrainConfig, settings: SweepSettings, run_dir: Path, *,
              init: InitialWeights | None = None, log: logging.Logger) -> SweepOutcome:
    """Run the sweep for `arch` on `data` around the recipe `cfg`; writes sweep.csv and the
    trial folders into `run_dir`. `init`: the retrain's `InitialWeights` (every trial starts
    from them)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    started = time.perf_counter()
    trials_dir = (run_dir / TRIALS_DIR).resolve()
    max_epochs = max(settings.epochs or (cfg.epochs,))
    log.info(f"sweep: {settings.trials} trial(s) with Ray Tune (Optuna TPE, ASHA over {max_epochs} epoch(s)), "
             f"lr around {cfg.peak_lr(1):.4g}, weight decay around {cfg.weight_decay:.3g}")
    session = RaySession(ray_address(settings.address), os.cpu_count() or 1, log)
    storage = tempfile.mkdtemp(prefix="nas-tune-")
    try:
        trainable = tune.with_parameters(
            train_trial, arch=arch.to_dict(), data=str(Path(data).resolve()), base_config=cfg.to_dict(),
            settings=settings, trials_dir=str(trials_dir),
            init_state=dict(init.state) if init is not None else None,
            init_source=init.source if init is not None else None)
        gpus = 1 if resolve_device(cfg.device) == "cuda" else 0
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": settings.threads_per_trial, "gpu": gpus}),
            param_space=search_space(cfg, settings),
            tune_config=tune.TuneConfig(
                metric="mAP", mode="max", num_samples=settings.trials, reuse_actors=True,
                search_alg=OptunaSearch(seed=cfg.seed),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=max_epochs,
                                        grace_period=min(settings.grace_epochs, max_epochs),
                                        reduction_factor=settings.reduction_factor, stop_last_trials=False),
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      callbacks=[_trial_log(log, settings.trials)]))
        with _quiet_tune():
            results = list(tuner.fit())
    finally:
        session.close()
        shutil.rmtree(storage, ignore_errors=True)
    rows = trial_rows(results, cfg, settings)
    try:
        chosen = choose(rows)
    finally:
        write_sweep_csv(run_dir / SWEEP_CSV, rows)
    final, kept = _keep_or_retrain(rows, chosen, cfg, settings, trials_dir, run_dir, log)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("completed", "stopped", "error")}
    log.info(f"sweep chose {chosen['trial']}: lr {chosen['lr']:.4g}, weight decay {chosen['weight_decay']:.3g}, "
             f"{chosen['epochs']} epoch(s), mAP {chosen['mAP']:.4f} ({counts['completed']} completed, "
             f"{counts['stopped']} stopped early, {counts['error']} failed); {run_dir / SWEEP_CSV}")
    return SweepOutcome(config=final, chosen=chosen, rows=rows, kept=kept,
                        wall_time_s=time.perf_counter() - started, counts=counts)
