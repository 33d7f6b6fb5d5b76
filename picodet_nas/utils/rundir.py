"""Run directories: `runs/<command>/<name>/`, never overwritten silently.

One rule for every command that writes a run, so that a run is never resumed or
overwritten by accident:

* `--out DIR` names the run directory; otherwise it is `runs/<command>/<--name>`, and without
  `--name` a fresh default name (the architecture and a timestamp).
* A new run refuses an existing non-empty directory (exit 2, with what to do instead).
* `--resume` without a value resumes the run `--out`/`--name` point at, or, with neither,
  the most recently modified run of this command that has a `last.pt`; `--resume PATH`
  resumes the run directory PATH (or the run holding the checkpoint file PATH). A resumed run
  writes into the same directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

RUNS_ROOT = Path("runs")
LAST_CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class RunDir:
    path: Path
    resume_from: Path | None  # the checkpoint to resume from, None for a new run


def default_run_name(stem: str) -> str:
    """`<stem>-<YYYYmmdd-HHMMSS>`: sorts by time and says what was trained."""
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _latest_run(root: Path) -> Path | None:
    runs = [p.parent for p in root.glob(f"*/{LAST_CHECKPOINT}")] if root.is_dir() else []
    return max(runs, key=lambda p: (p / LAST_CHECKPOINT).stat().st_mtime, default=None)


def prepare_run_dir(command: str, *, out: str | Path | None = None, name: str | None = None,
                    resume: bool | str | Path | None = None, default_name: str = "exp",
                    root: str | Path = RUNS_ROOT, create: bool = True) -> RunDir:
    """Decide (and create) the run directory of `command`; see the module docstring for the rule.

    `resume` is None/False (new run), True (`--resume` without a value) or a path.
    """
    base = Path(root) / command
    if resume not in (None, False):
        if resume is True:
            if out is not None:
                path = Path(out)
            elif name is not None:
                path = base / name
            else:
                path = _latest_run(base)
                if path is None:
                    raise UserError(f"--resume: no run with a {LAST_CHECKPOINT} under {base}; "
                                    f"pass --resume RUN_DIR or --out RUN_DIR")
        else:
            path = Path(resume)
            if path.is_file():
                if path.name != LAST_CHECKPOINT:
                    raise UserError(f"--resume {path}: expected a run directory or its {LAST_CHECKPOINT}")
                path = path.parent
        checkpoint = path / LAST_CHECKPOINT
        if not checkpoint.is_file():
            what = "run directory not found" if not path.exists() else f"no {LAST_CHECKPOINT} in it"
            raise UserError(f"--resume {path}: {what}; nothing to resume")
        return RunDir(path, checkpoint)

    if out is not None:
        path = Path(out)
    else:
        path = base / (name if name is not None else default_name)
        if name is None:  # a default name taken within the same second: number it
            n = 2
            while path.exists() and not _is_empty_dir(path):
                path = base / f"{default_name}-{n}"
                n += 1
    if path.exists() and not path.is_dir():
        raise UserError(f"run directory {path} exists and is not a directory")
    if path.is_dir() and not _is_empty_dir(path):
        hint = " (it holds a checkpoint: add --resume to continue it)" if (path / LAST_CHECKPOINT).is_file() else ""
        raise UserError(f"run directory {path} already exists and is not empty{hint}; "
                        f"choose another --name/--out")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return RunDir(path, None)
