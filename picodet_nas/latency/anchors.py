"""Tying a later measurement to the machine speed at which a latency table was built.

A table predicts latency at the speed the machine had while it was profiled. On a shared
machine that speed drifts by tens of percent within an hour (three quick starts in a row on
this VM: the same network measured 1.29 ms after one profile and 1.92 ms an hour later), so a
network timed minutes after the table compares the machine's drift as much as the predictor.

Anchoring separates the two: a few of the table's own validation subnets, whose latency the
table recorded when it was built, are timed again in the same interleaved rounds as the
network. Their geometric mean of now / then is the machine's speed factor (> 1: slower now);
the network's anchored ratio is measured / (predicted x speed factor), the predictor's error
with the drift taken out. The raw ratio (measured / predicted) stays reported beside it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

DEFAULT_ANCHORS = 4
DRIFT_WARN = 0.05  # a speed factor further than this from 1 is worth a line on the console


def table_anchors(table: Mapping[str, Any], predicted_ms: float | None, count: int = DEFAULT_ANCHORS) -> list[dict]:
    """Up to `count` of the table's validation subnets to time beside a network predicted at
    `predicted_ms`: those whose predicted latency is nearest to it (in ratio), so that the
    anchors run operators of a similar size; with no prediction, spread over the table's range.
    Each: {"arch", "table_ms" (measured when the table was built), "predicted_ms"}. Empty when
    the table has no validation subnets (`--validate 0`)."""
    if count < 0 or isinstance(count, bool) or not isinstance(count, int):
        raise ValueError(f"anchors must be an integer >= 0, got {count!r}")
    samples = [s for s in (table.get("validation") or {}).get("samples", [])
               if s.get("measured_ms", 0) > 0 and s.get("predicted_ms", 0) > 0 and "arch" in s]
    if not samples or count == 0:
        return []
    if predicted_ms is not None and predicted_ms > 0:
        chosen = sorted(samples, key=lambda s: abs(math.log(s["predicted_ms"] / predicted_ms)))[:count]
    else:
        ordered = sorted(samples, key=lambda s: s["predicted_ms"])
        step = max(1, len(ordered) // count)
        chosen = ordered[::step][:count]
    return [{"arch": dict(s["arch"]), "table_ms": float(s["measured_ms"]), "predicted_ms": float(s["predicted_ms"])}
            for s in chosen]


def speed_factor(now_ms: Sequence[float], then_ms: Sequence[float]) -> float:
    """Geometric mean of now / then over the anchors: how much slower (> 1) the machine runs now."""
    if len(now_ms) != len(then_ms) or not now_ms:
        raise ValueError("speed_factor needs as many anchors now as then, at least one")
    return math.exp(sum(math.log(a / b) for a, b in zip(now_ms, then_ms)) / len(now_ms))


def anchored(measured_ms: float, predicted_ms: float | None, anchors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The anchoring figures of a measurement: `machine_speed` (see `speed_factor`), the network's
    latency at the table's speed (`latency_at_table_speed_ms`) and, with a prediction,
    `anchored_latency_ratio` = measured / (predicted x machine_speed). `anchors` carry `table_ms`
    and `now_ms`. Empty without anchors."""
    if not anchors:
        return {}
    speed = speed_factor([a["now_ms"] for a in anchors], [a["table_ms"] for a in anchors])
    out: dict[str, Any] = {"machine_speed": round(speed, 4), "latency_at_table_speed_ms": round(measured_ms / speed, 4)}
    if predicted_ms:
        out["anchored_latency_ratio"] = round(measured_ms / (predicted_ms * speed), 4)
    return out


def describe(metrics: Mapping[str, Any]) -> str:
    """`; measured / predicted R (anchored A, machine speed S)` for a timed network's metrics
    (`engine.measure.measurement_fields`), as far as they are known."""
    text = ""
    if "latency_ratio" in metrics:
        text += f"; measured / predicted {metrics['latency_ratio']:.3f}"
    if "anchored_latency_ratio" in metrics:
        text += f" (anchored {metrics['anchored_latency_ratio']:.3f}, machine speed {metrics['machine_speed']:.3f})"
    return text


def drift_note(metrics: Mapping[str, Any]) -> str | None:
    """`drift_line` for a timed network's metrics (None when no anchors were timed)."""
    if "machine_speed" not in metrics:
        return None
    return drift_line(metrics["machine_speed"], len(metrics["latency_measurement"]["anchors"]))


def drift_line(speed: float, anchors: int) -> str | None:
    """A console line when the machine's speed has moved by more than `DRIFT_WARN` since the table."""
    if abs(speed - 1.0) <= DRIFT_WARN:
        return None
    how = f"{speed - 1:.0%} slower" if speed > 1 else f"{1 - speed:.0%} faster"
    return (f"this machine runs {how} than when the latency table was built ({anchors} of its validation subnets "
            f"timed beside the network): absolute figures hold only to that; the anchored ratio takes it out, "
            f"and a fresh `nas profile-device` gives a table of today's speed")
