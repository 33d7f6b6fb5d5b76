"""What every training command does around `Trainer.fit`: load and validate the data before
anything is written, agree on the run directory across ranks, take the config from the
checkpoint when resuming (refusing changed settings), and set up the run's log."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import yaml
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..data import CocoDetection, DataPaths
from ..errors import DataError, UserError
from ..utils.io import atomic_write_text
from ..utils.rundir import RunDir, prepare_run_dir
from .config import TrainConfig
from .distributed import DistInfo, on_main

LOGGER_NAME = "picodet_nas.run"
# Options a resumed run may change: they do not affect the numbers (or, for the device and
# deterministic kernels, only through floating-point rounding, which a user moving a run to
# another machine, or asking for exact repeats from now on, accepts).
RESUMABLE_CHANGES = ("workers", "device", "log_interval", "tensorboard", "deterministic")


class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not tear an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never stop training
            self.handleError(record)


def setup_logging(run_dir: Path | None, dist_info: DistInfo, log_name: str = "train.log") -> logging.Logger:
    """The run's logger: step and epoch lines into `run_dir/log_name`, epoch lines on the
    console; silent on ranks other than 0. Replaces the handlers of an earlier run in the
    same process."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if not dist_info.is_main:
        logger.addHandler(logging.NullHandler())
        return logger
    console = _TqdmHandler()
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if run_dir is not None:
        file_handler = logging.FileHandler(run_dir / log_name, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def close_logging() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def load_split(ann_file: Path, images: Path, announce: bool = True) -> CocoDetection:
    """A split, validated down to every image file's header, so bad data fails before training.

    The dataset's warnings (boxes dropped or clipped, with their counts) are printed as one
    line each on stderr (by one process under torchrun), not in Python's two-line format.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDetection(ann_file, images)
    if announce:
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    dataset.check_images()
    return dataset


def load_train_val(paths: DataPaths, announce: bool = True) -> tuple[CocoDetection, CocoDetection]:
    train_set = load_split(paths.train_ann, paths.train_images, announce)
    val_set = load_split(paths.val_ann, paths.val_images, announce)
    if train_set.label_to_cat_id != val_set.label_to_cat_id:
        raise DataError(f"categories of {paths.val_ann} (ids {val_set.label_to_cat_id}) differ from those of "
                        f"{paths.train_ann} (ids {train_set.label_to_cat_id}); both splits need the same categories")
    return train_set, val_set


def open_run(command: str, dist_info: DistInfo, *, out: str | None, name: str | None, resume: Any,
             default_name: str, finished_marker: str | None = None) -> RunDir:
    """Rank 0 decides and creates the run directory; every rank gets the same answer (or the same
    one-line error). `finished_marker`: a file whose presence means the run is complete."""

    def decide() -> RunDir:
        run = prepare_run_dir(command, out=out, name=name, resume=resume, default_name=default_name)
        if run.resume_from is not None and finished_marker and (run.path / finished_marker).exists():
            raise UserError(f"--resume {run.path}: the run is complete ({finished_marker} exists); nothing to resume")
        return run

    return on_main(dist_info, decide)


def load_resume_checkpoint(run: RunDir) -> dict[str, Any] | None:
    return None if run.resume_from is None else load_checkpoint(run.resume_from)


def resumed_config(ckpt: Mapping[str, Any], given: Mapping[str, Any], source: Path) -> TrainConfig:
    """The saved config, with the explicitly given options that may change on resume; any other
    given option that differs from the saved value is an error (a silently different recipe
    would make the run neither the old one nor a new one)."""
    saved = TrainConfig.from_dict(ckpt["config"])
    changes = {}
    for key, value in given.items():
        if value is None or key not in saved.to_dict():
            continue
        if key in RESUMABLE_CHANGES:
            changes[key] = value
        elif getattr(saved, key) != value:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {value} differs from the resumed run's {getattr(saved, key)} ({source}); "
                            f"leave it out to resume, or start a new run")
    return saved.replace(**changes)


def write_run_config(run_dir: Path, doc: Mapping[str, Any]) -> None:
    """`config.yaml`: the fully resolved settings of the run, for the record and for `--resume`."""
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dict(doc), sort_keys=False))
