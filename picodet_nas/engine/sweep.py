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
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..arch import Arch
from ..checkpoint import apply_state, load_checkpoint
from ..data import CocoDetection, resolve_data
from ..errors import UserError
from ..models import build_model
from ..utils.io import atomic_write_text
from ..utils.ray_session import RaySession, ray_address
from .config import TrainConfig
from .distributed import DistInfo, resolve_device
from .plan import StaticPlan
from .session import close_logging, load_train_val, setup_logging
from .state import seed_everything
from .precision import resolve_amp
from .trainer import Trainer

SWEEP_CSV = "sweep.csv"
TRIALS_DIR = "trials"
SEARCH_FACTOR = 4.0  # each value is searched within [centre / 4, centre * 4], log-uniformly
SWEEP_COLUMNS = ("trial", "lr", "weight_decay", "epochs", "epochs_run", "mAP", "mAP50", "best_mAP", "stopped_early",
                 "status", "chosen", "error")
KEPT_FILES = ("last.pt", "best.pt")  # moved from the chosen trial into the run directory when it is kept


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


# ---- the search space and the configs it leads to ------------------------------------------
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


# ---- one trial (runs in a Ray worker) ------------------------------------------------------
_DATASETS: dict[str, tuple[CocoDetection, CocoDetection]] = {}


def _datasets(data: str) -> tuple[CocoDetection, CocoDetection]:
    """The run's data, loaded once per worker process (reuse_actors: trial after trial)."""
    if data not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[data] = load_train_val(resolve_data(data), announce=False)
    return _DATASETS[data]


def train_trial(params: dict[str, Any], *, arch: dict[str, Any], data: str, base_config: dict[str, Any],
                settings: SweepSettings, trials_dir: str, init_state: Mapping[str, torch.Tensor] | None = None,
                init_source: str | None = None) -> None:
    """One Tune trial: train with `params`, report mAP after every epoch (`tune.report`)."""
    from ray import tune

    from .evaluate import CocoEvaluator
    from .trained import model_meta

    torch.set_num_threads(settings.threads_per_trial)
    net_arch = Arch.from_dict(arch)
    base = TrainConfig.from_dict(base_config)
    cfg = trial_config(base, params, trial_epochs(base, settings, params))
    train_set, val_set = _datasets(data)
    run_dir = Path(trials_dir) / tune.get_context().get_trial_name()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(cfg.device))
    dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    log = setup_logging(run_dir, dist_info)
    log.info(f"sweep trial {run_dir.name}: lr {cfg.lr:.4g}, weight decay {cfg.weight_decay:.3g}, {cfg.epochs} epoch(s)")
    seed_everything(cfg.seed)
    model = build_model(net_arch, train_set.num_classes)
    if init_state is not None:
        apply_state(model, init_state, init_source or "initial weights")
    amp_dtype = resolve_amp(cfg.amp, device)
    evaluator = CocoEvaluator(val_set, net_arch.input_size, device, batch_size=cfg.eval_batch_size,
                              workers=cfg.data_workers(device), amp_dtype=amp_dtype)

    def report(epoch: int, weights: dict, metrics: Mapping[str, float]) -> None:
        tune.report({"epoch": epoch, "mAP": float(metrics["mAP"]), "mAP50": float(metrics["mAP50"])})

    trainer = Trainer(model, StaticPlan(net_arch.input_size), cfg, train_set, run_dir, dist_info,
                      meta=model_meta(net_arch, train_set), evaluator=evaluator, best_metric="mAP",
                      on_epoch_end=report, logger=log)
    try:
        trainer.fit()
    finally:
        close_logging()


# ---- the sweep -----------------------------------------------------------------------------
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


def trial_name(trial) -> str:
    """`trial_000`, `trial_001`...: the trial's number in the order the search proposed it
    (Tune's experiment tag starts with it, counting from 1), for the trial and its folder.
    A function of the trial alone: Tune copies name creators, so a counter would not do."""
    return f"trial_{int(str(trial.experiment_tag).split('_', 1)[0]) - 1:03d}"


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


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None:  # RayTaskError wraps the trial's own exception
        cause = cause.cause
    text = str(cause).strip().splitlines()
    return (text[-1] if text else type(cause).__name__)[:200]


def trial_rows(results: Sequence[Any], cfg: TrainConfig, settings: SweepSettings) -> list[dict[str, Any]]:
    """sweep.csv's rows from Tune's results (objects with `path`, `config`, `metrics`, `error`,
    `metrics_dataframe`), in trial order."""
    rows = []
    for r in results:
        metrics = r.metrics or {}
        epochs = trial_epochs(cfg, settings, r.config)
        run = int(metrics.get("epoch", 0) or 0)
        history = r.metrics_dataframe
        best = float(history["mAP"].max()) if history is not None and "mAP" in history and len(history) else None
        failed = r.error is not None
        rows.append({
            "trial": Path(r.path).name,
            "lr": float(r.config["lr"]),
            "weight_decay": float(r.config["weight_decay"]),
            "epochs": epochs,
            "epochs_run": run,
            "mAP": float(metrics["mAP"]) if "mAP" in metrics else None,
            "mAP50": float(metrics["mAP50"]) if "mAP50" in metrics else None,
            "best_mAP": best,
            "stopped_early": (not failed) and run < epochs,
            "status": "error" if failed else ("stopped" if run < epochs else "completed"),
            "chosen": False,
            "error": _first_line(r.error),
        })
    return sorted(rows, key=lambda row: row["trial"])


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best final mAP among the trials that ran their whole schedule (else among all that
    reported), ties to the earlier trial; marks it `chosen`."""
    usable = [r for r in rows if r["status"] != "error" and r["mAP"] is not None and not math.isnan(r["mAP"])]
    if not usable:
        errors = [r["error"] for r in rows if r["error"]]
        raise UserError(f"all {len(rows)} sweep trial(s) failed" + (f"; the first: {errors[0]}" if errors else ""))
    pool = [r for r in usable if r["status"] == "completed"] or usable
    best = max(pool, key=lambda r: r["mAP"])  # max keeps the first of equals: the earlier trial
    best["chosen"] = True
    return best


def write_sweep_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SWEEP_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                         for k in SWEEP_COLUMNS})
    atomic_write_text(path, buf.getvalue())


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
              init: Any = None, log: logging.Logger) -> SweepOutcome:
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
