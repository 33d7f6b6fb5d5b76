"""`measured_latency_ms` of a retrained network: timed with ONNX Runtime on this machine, the
way the search's latency table was measured, and compared with the search's prediction and
budget.

`latency_plan` decides, before the training, whether and how the network will be timed;
`latency_metrics` times it after the training and gives the fields of `metrics.json`.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..arch import Arch
from ..errors import LatencyTableError
from .search_result import SearchResult


def latency_plan(search: SearchResult | None, measure: bool | None) -> dict[str, Any] | None:
    """How `measured_latency_ms` will be timed, or None when it will not be.

    measure None (the default): timed when the architecture is a search result that names its
    latency table; True: always; False: never. With a table, the timing repeats the table's
    own measurement (threads, repeats, clock, statistic...; the input size is the
    architecture's), so that the measured and the predicted figure compare like with like;
    without one, the profiler's defaults. The table is read now, before training, so that a
    moved or broken table fails in one line at the start rather than after the training.
    """
    table_path = search.latency_table if search is not None else None
    if measure is False or (measure is None and table_path is None):
        return None
    if table_path is None:
        return {"timing": {}, "record": {"latency_table": None}}
    from ..latency import load_table, table_timing
    from ..latency.run_bundle import cpu_model

    try:
        table = load_table(table_path)
    except LatencyTableError as e:
        raise LatencyTableError(f"{e} (the latency table {search.path} names; pass --no-measure-latency to retrain "
                                f"without timing the model)") from None
    meta = table["meta"]
    if meta["backend"] != "onnxruntime" and measure is None:
        return None  # a table of eager PyTorch timings: an ONNX Runtime figure would not compare
    timing = table_timing(table)
    record = {"latency_table": str(table_path), "table_device": meta["device"], "table_cpu_model": meta["cpu_model"],
              "same_cpu_model": meta["cpu_model"] == cpu_model(), "table_num_classes": meta["num_classes"],
              "backend": "onnxruntime",
              **{k: timing[k] for k in ("threads", "repeats", "clock", "statistic")}}
    return {"timing": timing, "record": record}


def latency_metrics(arch: Arch, num_classes: int, plan: Mapping[str, Any],
                    figures: Mapping[str, float]) -> dict[str, Any]:
    """Time the network of `arch` as `plan` (`latency_plan`) says: `measured_latency_ms` and how
    it was measured; with the search's `figures` (`SearchResult.latency_figures`), also
    `latency_ratio` (measured / predicted) and `budget_met` (measured <= budget)."""
    from ..latency import measure_latency

    stats = measure_latency(arch, num_classes=num_classes, **plan["timing"])
    measured = round(stats["latency_ms"], 3)
    out: dict[str, Any] = {
        "measured_latency_ms": measured,
        "latency_measurement": {**plan["record"], "input_size": arch.input_size, "num_classes": num_classes,
                                "statistic": stats["statistic"], "p10_ms": round(stats["p10_ms"], 4),
                                "p90_ms": round(stats["p90_ms"], 4), "samples": stats["samples"]}}
    if "predicted_latency_ms" in figures:
        out["latency_ratio"] = round(measured / figures["predicted_latency_ms"], 4)
    if "latency_budget_ms" in figures:
        out["budget_met"] = measured <= figures["latency_budget_ms"]
    return out
