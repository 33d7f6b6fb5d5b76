"""Agreement between predicted and measured latency, and the calibration fit (SciPy's
Kendall tau-b and Theil-Sen estimator)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (`scipy.stats.kendalltau`; ties handled by tau-b).
    NaN when there are fewer than two pairs or one variable is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("kendall_tau needs two 1-D sequences of the same length")
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def prediction_errors(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE, share within ±5% / ±10% (fractions), worst error and Kendall tau."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if p.size == 0:
        return {"mape": None, "within_5pct": None, "within_10pct": None, "max_abs_pct_error": None,
                "kendall_tau": None}
    err = np.abs(p / m - 1.0)
    tau = kendall_tau(p, m)
    return {
        "mape": float(err.mean()),
        "within_5pct": float(np.mean(err <= 0.05)),
        "within_10pct": float(np.mean(err <= 0.10)),
        "max_abs_pct_error": float(err.max()),
        "kendall_tau": None if math.isnan(tau) else tau,
    }


# ---------------------------------------------------------------------------- calibration
def _fit(method: str, s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust fits (one slow outlier among 20 whole-network timings must not tilt the line).

    ratio:  y = a*s, a = median(y / s).
    linear: y = a*s + b, Theil-Sen (`scipy.stats.theilslopes`): a = median of pairwise slopes,
            b = median(y - a*s).
    """
    if method == "ratio" or s.size < 3 or np.ptp(s) <= 1e-9 * np.abs(s).max():
        return float(np.median(y / s)), 0.0
    fit = stats.theilslopes(y, s, method="joint")
    return float(fit.slope), float(fit.intercept)


def _loo_mape(method: str, s: np.ndarray, y: np.ndarray) -> float:
    errs = []
    for k in range(s.size):
        mask = np.arange(s.size) != k
        a, b = _fit(method, s[mask], y[mask])
        errs.append(abs((a * s[k] + b) / y[k] - 1.0))
    return float(np.mean(errs))


def fit_calibration(sums: Sequence[float], measured: Sequence[float]) -> dict:
    """`predicted = a * sum_of_parts + b`, fitted on whole-network measurements.

    The sum of parts misses what crossing a part boundary costs or saves (per-call overhead,
    fusions across the boundary, cache state), which is roughly an offset plus a share of the
    total. Two robust forms are fitted, a ratio (b = 0) and a Theil-Sen line, and the one with
    the smaller leave-one-out error on the calibration subnets wins: over a narrow latency
    range a free intercept fits noise (a slope of 2 from 20 noisy points), over a wide one
    it is worth having. A slope that is not positive would make the prediction non-monotone
    (and the fastest-subnet search wrong), so such a fit is never chosen.
    """
    s, y = np.asarray(sums, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if s.size == 0:
        return {"method": "identity", "formula": "predicted_ms = a * sum_of_parts_ms + b", "a": 1.0, "b": 0.0,
                "subnets": 0, "loo_mape": {}}
    loo = {m: _loo_mape(m, s, y) if s.size >= 3 else math.nan for m in ("ratio", "linear")}
    candidates = {m: _fit(m, s, y) for m in ("ratio", "linear")}
    ok = [m for m in ("ratio", "linear") if candidates[m][0] > 0]
    method = min(ok, key=lambda m: (loo[m] if not math.isnan(loo[m]) else math.inf, m != "ratio")) if ok else "identity"
    a, b = candidates[method] if method != "identity" else (1.0, 0.0)
    return {
        "method": method,
        "formula": "predicted_ms = a * sum_of_parts_ms + b",
        "a": a,
        "b": b,
        "subnets": int(s.size),
        "loo_mape": {m: (None if math.isnan(v) else v) for m, v in loo.items()},
    }
