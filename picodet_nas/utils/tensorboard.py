"""TensorBoard scalars of a run (`--tensorboard`), an optional extra beside `metrics.csv`.

`ScalarLog(run_dir)` writes event files into `run_dir/tensorboard/`; `tensorboard --logdir runs`
then shows every run. A resumed run passes the step it restarts from as `purge_step`, so the
events an interrupted session wrote after its last checkpoint are dropped and its curves continue
without a fold. The `tensorboard` package is needed only when the flag is given
(`pip install "picodet-nas[tensorboard]"`); without it the command stops before any work, in one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError

TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """A one-line UserError when the `tensorboard` package is missing."""
    try:
        import tensorboard  # noqa: F401  (only whether it imports)
    except ImportError:
        raise UserError('--tensorboard needs the tensorboard package: pip install "picodet-nas[tensorboard]" '
                        "(or pip install tensorboard)") from None


class ScalarLog:
    """Scalars of one run under `run_dir/tensorboard`, each tagged `group/name`."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step or None)

    def add(self, group: str, values: Mapping[str, Any], step: int) -> None:
        """Every finite number of `values` as `group/key` at `step` (None and text are skipped)."""
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self._writer.add_scalar(f"{group}/{key}", float(value), int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
