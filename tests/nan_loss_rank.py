"""`nas ARGS` with the training loss of one rank turned NaN at one step, for the tests of a
diverging DDP run:

    python nan_loss_rank.py RANK STEP STAMP ARGS...

The loss of the process whose RANK environment variable is RANK becomes NaN at its STEP-th
loss computation (the STEP-th step of a static network's training), and that process writes
the time (`time.time()`) into the file STAMP; every other loss is the real one. Nothing in
the package knows of this: the loss class is patched here.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from picodet_nas.cli.main import main
from picodet_nas.losses import PicoDetLoss


def poison(rank: int, step: int, stamp: Path) -> None:
    original = PicoDetLoss.__call__
    calls = 0

    def call(self, *args, **kwargs):
        nonlocal calls
        total, parts = original(self, *args, **kwargs)
        calls += 1
        if int(os.environ.get("RANK", "0")) == rank and calls == step:
            total = total * float("nan")
            stamp.write_text(repr(time.time()))
        return total, parts

    PicoDetLoss.__call__ = call


if __name__ == "__main__":
    poison(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
    sys.exit(main(sys.argv[4:]))
