"""From a RESULTS document (the timings of a plan's models, made here or on a device) to the
latency table: the structure check of the document, the table's entries, the calibration
fitted on the calibration subnets and the validation on the others."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arch import Arch
from ..errors import LatencyTableError, SpaceError
from ..space import SearchSpace
from . import run_bundle
from .metrics import fit_calibration, prediction_errors
from .predictor import LatencyPredictor
from .table import STATISTICS, TABLE_FORMAT, TABLE_VERSION, check_table, default_table_name

FIGURES = ("median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms")  # the timing figures a table keeps


def build_table(results: dict, *, name: str | None = None, statistic: str | None = None,
                source: str = "local", results_name: str = "results") -> dict:
    """The latency table from a RESULTS document (timed here, or on a device: `source`).

    Calibration is fitted on the calibration subnets only; validation compares the calibrated
    prediction with the validation subnets, which the fit never saw.
    """
    check_results(results, results_name)
    man, timings, s, device = results["manifest"], results["timings"], results["settings"], results["device"]
    statistic = statistic or s.get("statistic") or "median"
    if statistic not in STATISTICS:
        raise LatencyTableError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
    key = f"{statistic}_ms"

    def figures(model: str) -> dict[str, Any]:
        t = timings[model]
        return {**{k: round(float(t[k]), 5) for k in FIGURES}, "samples": int(t["samples"])}

    space = SearchSpace.from_dict(man["space"]["definition"])
    name = name or default_table_name(device["device"], results["backend"], int(s["threads"]), space.name,
                                      man["input_sizes"], space.input_sizes, s.get("precision", "fp32"))
    backend = results["backend"]
    meta = {
        "name": name,
        "device": device["device"],
        "cpu_model": device["cpu_model"],
        "cpu_count": device.get("cpu_count"),
        "machine": device.get("machine"),
        "os": device["os"],
        "python": device.get("python"),
        "backend": backend,
        "backend_version": results["backend_version"],
        "execution_provider": results.get("execution_provider"),
        "threads": int(s["threads"]),
        "inter_op_threads": 1 if backend == "onnxruntime" else None,
        "allow_spinning": s.get("allow_spinning"),
        "precision": s.get("precision", "fp32"),
        "pin_core": s.get("pin_core"),  # asked for: None, "auto" or a core
        "pinned_core": s.get("pinned_core"),  # where the timing ran (None: unpinned)
        "graph_optimization": "ORT_ENABLE_ALL" if backend == "onnxruntime" else None,
        "execution_mode": "sequential",
        "batch": 1,
        "input_sizes": list(man["input_sizes"]),
        "num_classes": int(man["num_classes"]),
        "space": man["space"],
        "repeats": int(s["repeats"]),
        "warmup": int(s["warmup"]),
        "burst": int(s["burst"]),
        "clock": s.get("clock", "wall"),
        "spread_limit": float(s["spread_limit"]),
        "max_remeasure": int(s["max_remeasure"]),
        "phases": int(s.get("phases", 1)),
        "statistic": statistic,
        "timing": "interleaved round-robin over each group's models; per visit 1 untimed call, then `burst` "
                  "timed calls on `clock`; wide models re-measured; figure = `statistic` over all timed calls",
        "seed": int(s.get("seed", 0)),
        "date": results["date"],
        "timing_wall_s": results.get("wall_time_s"),
        "wall_time_s": results.get("wall_time_s"),
        "source": source,
        "runner_version": results["runner_version"],
    }
    table: dict[str, Any] = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "meta": meta,
        "entries": [{**e, **figures(e["part"])} for e in man["entries"]],
        "fixed": {k: [{**row, **figures(row["part"])} for row in man["fixed"][k]] for k in ("stem", "neck_head")},
        "calibration": {"method": "identity", "a": 1.0, "b": 0.0},
    }
    raw = LatencyPredictor(table, name, complete=False)

    def sums_and_measured(subnets: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        sums = np.array([raw.sum_of_parts(Arch.from_dict(x["arch"])) for x in subnets])
        measured = np.array([float(timings[x["model"]][key]) for x in subnets])
        return sums, measured

    cal_subnets, val_subnets = man["calibration"], man["validation"]
    cal_sums, cal_measured = sums_and_measured(cal_subnets)
    calibration = fit_calibration(cal_sums, cal_measured)
    calibration["samples"] = [{"arch": x["arch"], "sum_ms": round(float(sm), 5), "measured_ms": round(float(ms), 5)}
                              for x, sm, ms in zip(cal_subnets, cal_sums, cal_measured)]
    table["calibration"] = calibration
    a, b = calibration["a"], calibration["b"]

    val_sums, val_measured = sums_and_measured(val_subnets)
    predicted = a * val_sums + b
    spreads = [float(timings[x["model"]]["spread"]) for x in val_subnets]
    errors = prediction_errors(predicted, val_measured)
    table["validation"] = {
        "subnets": len(val_subnets),
        **errors,
        "raw_sum_mape": prediction_errors(val_sums, val_measured)["mape"],
        "noise": float(np.median(spreads)) if spreads else None,
        "samples": [{"arch": x["arch"], "predicted_ms": round(float(p), 5), "measured_ms": round(float(m), 5),
                     "sum_ms": round(float(sm), 5), "spread": round(sp, 4)}
                    for x, p, m, sm, sp in zip(val_subnets, predicted, val_measured, val_sums, spreads)],
    }
    table["range_ms"] = LatencyPredictor(table, name, complete=False).range_ms()
    order = ("format", "version", "meta", "entries", "fixed", "calibration", "range_ms", "validation")
    return check_table({k: table[k] for k in order}, name)


def check_results(results: Any, source: str = "results") -> dict:
    """A RESULTS document's structure, as a LatencyTableError of one line when it is wrong."""
    if not isinstance(results, dict) or results.get("format") != run_bundle.RESULTS_FORMAT:
        raise LatencyTableError(f"{source}: not a RESULTS.json written by run_bundle.py")
    if results.get("runner_version") != run_bundle.RUNNER_VERSION:
        raise LatencyTableError(f"{source}: written by runner version {results.get('runner_version')!r}; "
                                f"this picodet-nas reads version {run_bundle.RUNNER_VERSION} (make a new bundle)")
    for k in ("manifest", "timings", "settings", "device", "backend", "backend_version", "date"):
        if k not in results:
            raise LatencyTableError(f"{source}: missing key {k!r}")
    man = results["manifest"]
    for k in ("space", "input_sizes", "num_classes", "entries", "fixed", "calibration", "validation", "models"):
        if not isinstance(man, dict) or k not in man:
            raise LatencyTableError(f"{source}: manifest is missing {k!r}")
    try:
        referenced = ({e["part"] for e in man["entries"]} | {x["model"] for x in man["calibration"] + man["validation"]}
                      | {r["part"] for k in ("stem", "neck_head") for r in man["fixed"][k]})
    except (KeyError, TypeError):
        raise LatencyTableError(f"{source}: the manifest is malformed (entries, fixed or subnets)") from None
    missing = sorted(referenced - set(results["timings"]))
    if missing:
        raise LatencyTableError(f"{source}: no timing for {len(missing)} model(s), e.g. {missing[0]!r}")
    for m, t in results["timings"].items():
        if not isinstance(t, dict) or any(not isinstance(t.get(k), (int, float)) or not t[k] > 0 for k in FIGURES):
            raise LatencyTableError(f"{source}: timing of {m!r} is not a set of positive figures")
    try:
        space = SearchSpace.from_dict(man["space"]["definition"], source=f"{source}: manifest.space")
    except (SpaceError, TypeError, KeyError) as e:
        raise LatencyTableError(str(e)) from None
    if space.fingerprint != man["space"].get("fingerprint"):
        raise LatencyTableError(f"{source}: the manifest's space does not match its fingerprint (edited or corrupt)")
    return results
