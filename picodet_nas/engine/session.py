"""What every training command does around `Trainer.fit`: load and validate the data before
anything is written, agree on the run directory across ranks (`utils.rundir`), take the config
from the checkpoint when resuming (refusing changed settings), and set up the run's log
(`utils.logs`)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..checkpoint import load_checkpoint
from ..data import CocoDetection, DataPaths
from ..data.classes import Classes, check_same_classes
from ..utils.logs import close_run_log, open_run_log
from ..utils.rundir import RunDir, check_resumed_settings, prepare_run_dir
from .config import TrainConfig
from .distributed import DistInfo, on_main

LOGGER_NAME = "picodet_nas.run"
# Options a resumed run may change: they do not affect the numbers (or, for the device and
# deterministic kernels, only through floating-point rounding, which a user moving a run to
# another machine, or asking for exact repeats from now on, accepts).
RESUMABLE_CHANGES = ("workers", "device", "log_interval", "tensorboard", "deterministic")


def setup_logging(run_dir: Path | None, dist_info: DistInfo, log_name: str = "train.log") -> logging.Logger:
    """The training's logger (`utils.logs.open_run_log`): step and epoch lines into
    `run_dir/log_name`, epoch lines on the console; silent on ranks other than 0."""
    return open_run_log(LOGGER_NAME, run_dir / log_name if run_dir is not None else None,
                        quiet=not dist_info.is_main)


def close_logging() -> None:
    close_run_log(LOGGER_NAME)


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
    check_same_classes(Classes.of_dataset(val_set), Classes.of_dataset(train_set),
                       "both splits need the same categories")
    return train_set, val_set


def open_run(command: str, dist_info: DistInfo, *, out: str | None, name: str | None, resume: Any,
             default_name: str, finished_marker: str | None = None) -> RunDir:
    """Rank 0 decides and creates the run directory (`utils.rundir.prepare_run_dir`); every rank
    gets the same answer (or the same one-line error)."""
    return on_main(dist_info, lambda: prepare_run_dir(command, out=out, name=name, resume=resume,
                                                      default_name=default_name, finished_marker=finished_marker))


def load_resume_checkpoint(run: RunDir) -> dict[str, Any] | None:
    return None if run.resume_from is None else load_checkpoint(run.resume_from)


def resumed_config(ckpt: Mapping[str, Any], given: Mapping[str, Any], source: Path, *,
                   other_settings: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {})) -> TrainConfig:
    """The saved config, with the explicitly given options that may change on resume; any other
    given option that differs from the saved value is an error (`check_resumed_settings`).
    `other_settings`: (recorded, given) settings of the command that are not training options
    (train-supernet's strategy), checked in the same call so that one message names every
    difference."""
    saved = TrainConfig.from_dict(ckpt["config"])
    recorded = {key: getattr(saved, key) for key in saved.to_dict()}
    fixed = {k: v for k, v in given.items() if k not in RESUMABLE_CHANGES}
    check_resumed_settings({**recorded, **other_settings[0]}, {**fixed, **other_settings[1]}, source)
    return saved.replace(**{k: v for k, v in given.items()
                            if k in RESUMABLE_CHANGES and k in recorded and v is not None})
