"""Type checks of values read from user files (YAML, JSON), where `True` must not pass for 1."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


def is_int(x: Any) -> bool:
    """An integer, and not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any, finite: bool = False) -> bool:
    """A real number, and not a bool; with `finite`, neither NaN nor infinite."""
    return isinstance(x, Real) and not isinstance(x, bool) and (not finite or math.isfinite(x))
