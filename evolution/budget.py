"""Latency budgets as users type them.

`17ms`, `17 ms`, `17` (milliseconds) and `0.017s` are the same budget; anything
else is a clear error rather than a guess, because a budget read in the wrong unit silently
searches the wrong part of the space.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from picodet_nas.errors import UserError

_BUDGET = re.compile(r"^\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>ms|s)?\s*$")


def parse_budget(text: str | float | int) -> float:
    """The budget in milliseconds; a `UserError` (one line) for anything unparseable,
    non-finite or not positive. A bare number is milliseconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        ms = float(text)
    else:
        match = _BUDGET.match(str(text))
        if match is None:
            raise UserError(f"--latency-budget {text!r} is not a latency: expected milliseconds such as "
                            f"'17ms', '17 ms' or '17', or seconds such as '0.017s'")
        # Decimal for the unit change: in floats, 0.0175 * 1000 need not be 17.5 exactly.
        number = Decimal(match["number"])
        ms = float(number * 1000 if match["unit"] == "s" else number)
    if not math.isfinite(ms) or ms <= 0:
        raise UserError(f"--latency-budget {text!r} must be a positive latency, such as '17ms'")
    return ms


def format_ms(ms: float) -> str:
    """`17`, `12.5`, `0.35`: a budget as a short string for names and messages."""
    return f"{ms:.6g}"
