"""The log of a run: one named logger per command, every record into a file of the run
directory, the important ones on the console without tearing tqdm's progress bars.

Lines read `message` (the file prefixes a timestamp); warnings and errors name their level,
`WARNING: message`. `append_log_line` adds one timestamped line to a log file, for commands
that record a single result per run.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class _TqdmHandler(logging.StreamHandler):
    """Console lines on stderr that do not tear an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never stop the run
            self.handleError(record)


class _LineFormatter(logging.Formatter):
    """`[timestamp ]prefix[LEVEL: ]message`, the level named from WARNING up."""

    def __init__(self, prefix: str = "", timestamp: bool = False):
        super().__init__()
        head = ("%(asctime)s " if timestamp else "") + prefix.replace("%", "%%")
        self._plain = logging.Formatter(head + "%(message)s", TIME_FORMAT)
        self._levelled = logging.Formatter(head + "%(levelname)s: %(message)s", TIME_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return (self._levelled if record.levelno >= logging.WARNING else self._plain).format(record)


def close_run_log(name: str) -> None:
    """Remove (and close) every handler of the logger `name`."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def open_run_log(name: str, path: Path | None, *, console_level: int = logging.INFO, console_prefix: str = "",
                 quiet: bool = False) -> logging.Logger:
    """The logger `name` of a run: every record (DEBUG up) appended to the file `path` (none when
    None), records from `console_level` up on stderr, each line of the console starting with
    `console_prefix`. `quiet` (DDP ranks other than 0): it writes nothing. The handlers of an
    earlier run in the same process are replaced; `close_run_log` closes the file."""
    close_run_log(name)
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if quiet:
        logger.addHandler(logging.NullHandler())
        return logger
    console = _TqdmHandler()
    console.setLevel(console_level)
    console.setFormatter(_LineFormatter(console_prefix))
    logger.addHandler(console)
    if path is not None:
        file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(_LineFormatter(timestamp=True))
        logger.addHandler(file_handler)
    return logger


def append_log_line(path: Path, text: str) -> None:
    """One timestamped line at the end of the log file `path`."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{time.strftime(TIME_FORMAT)} {text}\n")
