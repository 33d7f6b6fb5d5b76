"""Run directories: `runs/<command>/<name>/`, never overwritten silently, and the checks of a resume.

One rule for every command that writes a run, so that a run is never resumed or
overwritten by accident:

* `--out DIR` names the run directory; otherwise it is `runs/<command>/<--name>`, and without
  `--name` a fresh default name (what was run and a timestamp).
* A new run refuses an existing non-empty directory (exit 2, with what to do instead).
* A command's runs are recognised by their marker file (`last.pt` for a training, the
  `config.yaml` of a search). `--resume` without a value resumes the run `--out`/`--name` point
  at, or, with neither, the most recently modified run of this command that has the marker;
  `--resume PATH` resumes the run directory PATH (or the run holding the marker file PATH). A
  resumed run writes into the same directory.
* A resumed run continues the settings it was started with: `check_resumed_settings` refuses,
  in one line naming every differing setting, a given value that differs from the recorded one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..errors import UserError
from .io import atomic_write_text, read_yaml

RUNS_ROOT = Path("runs")
LAST_CHECKPOINT = "last.pt"
RUN_CONFIG = "config.yaml"


@dataclass(frozen=True)
class RunDir:
    path: Path
    resume_from: Path | None  # the resumed run's marker file (its last.pt...), None for a new run
    created: bool = False  # the directory did not exist before `prepare_run_dir`

    def discard(self) -> None:
        """Leave nothing behind of a new run that failed before it started, so that the corrected
        command finds the directory as it was: removed if this run created it, else emptied."""
        if self.resume_from is not None or not self.path.is_dir():
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def default_run_name(stem: str) -> str:
    """`<stem>-<YYYYmmdd-HHMMSS>`: sorts by time and says what was run."""
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _latest_run(root: Path, marker: str) -> Path | None:
    runs = [p.parent for p in root.glob(f"*/{marker}")] if root.is_dir() else []
    return max(runs, key=lambda p: (p / marker).stat().st_mtime, default=None)


def _resumed_dir(base: Path, out: str | Path | None, name: str | None, resume: Any, marker: str) -> Path:
    if resume is not True:
        path = Path(resume)
        if path.is_file():
            if path.name != marker:
                raise UserError(f"--resume {path}: expected a run directory or its {marker}")
            path = path.parent
        return path
    if out is not None:
        return Path(out)
    if name is not None:
        return base / name
    path = _latest_run(base, marker)
    if path is None:
        raise UserError(f"--resume: no run with a {marker} under {base}; pass --resume RUN_DIR or --out RUN_DIR")
    return path


def prepare_run_dir(command: str, *, out: str | Path | None = None, name: str | None = None,
                    resume: bool | str | Path | None = None, default_name: str = "exp",
                    root: str | Path = RUNS_ROOT, create: bool = True, marker: str = LAST_CHECKPOINT,
                    finished_marker: str | None = None) -> RunDir:
    """Decide (and create) the run directory of `command`; see the module docstring for the rule.

    resume: None/False (new run), True (`--resume` without a value) or a path.
    marker: the file a resumable run of this command holds.
    finished_marker: a file whose presence means the run is complete (nothing to resume).
    """
    base = Path(root) / command
    if resume not in (None, False):
        path = _resumed_dir(base, out, name, resume, marker)
        found = path / marker
        if not found.is_file():
            what = "run directory not found" if not path.exists() else f"no {marker} in it"
            raise UserError(f"--resume {path}: {what}; nothing to resume")
        if finished_marker and (path / finished_marker).exists():
            raise UserError(f"--resume {path}: the run is complete ({finished_marker} exists); nothing to resume")
        return RunDir(path, found)

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
        hint = f" (it holds a {marker}: add --resume to continue it)" if (path / marker).is_file() else ""
        raise UserError(f"run directory {path} already exists and is not empty{hint}; "
                        f"choose another --name/--out")
    existed = path.exists()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return RunDir(path, None, created=create and not existed)


def write_run_config(run_dir: Path, doc: Mapping[str, Any]) -> None:
    """`config.yaml`: the fully resolved settings of the run, for the record and for `--resume`."""
    atomic_write_text(Path(run_dir) / RUN_CONFIG, yaml.safe_dump(dict(doc), sort_keys=False))


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The settings a run recorded in its `config.yaml` (None when it has none); a file that is
    not a YAML mapping is a one-line error."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    doc = read_yaml(path, "run config", after="; cannot resume")
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping of settings; cannot resume")
    return doc


def flag_name(key: str) -> str:
    """The command-line flag of a setting: `sync_bn` -> `--sync-bn`."""
    return "--" + key.replace("_", "-")


def check_resumed_settings(recorded: Mapping[str, Any], given: Mapping[str, Any], source: str | Path, *,
                           keys: Iterable[str] | None = None, labels: Mapping[str, str] | None = None) -> None:
    """Refuse to resume when a setting differs from the one the run was started with (a silently
    different setting would make the run neither the old one nor a new one).

    keys:   the settings to compare, missing ones counting as None (default: every given setting
            that is not None and that the record holds).
    labels: how the message names a setting (default: its flag, `flag_name`).
    source: the file the recorded settings come from, named in the message.
    """
    if keys is None:
        keys = [k for k, v in given.items() if v is not None and k in recorded]
    differing = [k for k in keys if recorded.get(k) != given.get(k)]
    if not differing:
        return
    labels = labels or {}
    now = [f"{labels.get(k, flag_name(k))} {given.get(k)}" for k in differing]
    then = [str(recorded.get(k)) for k in differing]
    verb = "differs" if len(differing) == 1 else "differ"
    raise UserError(f"{_and(now)} {verb} from the resumed run's {_and(then)} ({source}); resume with the same "
                    f"settings, or start a new run")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
