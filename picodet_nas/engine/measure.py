"""`measured_latency_ms` of a retrained network: timed with ONNX Runtime on this machine, the
way the search's latency table was measured, and compared with the search's prediction and
budget.

`latency_plan` decides, before the training, whether and how the network will be timed;
`latency_metrics` times it after the training and gives the fields of `metrics.json`.

With a table that has validation subnets, a few of them are timed beside the network
(`latency.anchors`): `machine_speed` says how much slower (> 1) the machine runs than when the
table was built, and `anchored_latency_ratio` is the predictor's error with that drift taken out.
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
    anchors = {"table": {"validation": table.get("validation") or {}}, "classes": meta["num_classes"]}
    record = {"latency_table": str(table_path), "table_device": meta["device"], "table_cpu_model": meta["cpu_model"],
              "same_cpu_model": meta["cpu_model"] == cpu_model(), "table_num_classes": meta["num_classes"],
              "backend": "onnxruntime",
              **{k: timing[k] for k in ("threads", "repeats", "clock", "statistic")}}
    return {"timing": timing, "record": record, "anchors": anchors}


def latency_metrics(arch: Arch, num_classes: int, plan: Mapping[str, Any],
                    figures: Mapping[str, float]) -> dict[str, Any]:
    """Time the network of `arch` as `plan` (`latency_plan`) says: `measured_latency_ms` and how
    it was measured; with the search's `figures` (`SearchResult.latency_figures`), also
    `latency_ratio` (measured / predicted) and `budget_met` (measured <= budget)."""
    from ..latency import measure_latency

    predicted = figures.get("predicted_latency_ms")
    stats = measure_latency(arch, num_classes=num_classes, **plan["timing"], **plan_anchors(plan, predicted))
    return measurement_fields(stats, predicted, figures.get("latency_budget_ms"),
                              {**plan["record"], "input_size": arch.input_size, "num_classes": num_classes})


def plan_anchors(plan: Mapping[str, Any], predicted_ms: float | None) -> dict[str, Any]:
    """`measure_latency` / `measure_onnx` keyword arguments for the plan's anchors (none when the
    plan has no table or its table no validation subnets)."""
    from ..latency.anchors import table_anchors

    spec = plan.get("anchors")
    if not spec:
        return {}
    anchors = table_anchors(spec["table"], predicted_ms)
    return {"anchors": anchors, "anchor_classes": spec["classes"]} if anchors else {}


def measurement_fields(stats: Mapping[str, Any], predicted_ms: float | None, budget_ms: float | None,
                       record: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json's fields for one timed network: `measured_latency_ms`, `latency_measurement`
    (how, with the anchors), `latency_ratio` (measured / predicted), `budget_met` (measured <=
    budget) and, when anchors were timed, `machine_speed` and `anchored_latency_ratio`."""
    from ..latency.anchors import anchored

    measured = round(stats["latency_ms"], 3)
    how = {**record, "statistic": stats["statistic"], "p10_ms": round(stats["p10_ms"], 4),
           "p90_ms": round(stats["p90_ms"], 4), "samples": stats["samples"]}
    out: dict[str, Any] = {"measured_latency_ms": measured, "latency_measurement": how}
    if predicted_ms:
        out["latency_ratio"] = round(measured / predicted_ms, 4)
    if budget_ms is not None:
        out["budget_met"] = measured <= budget_ms
    if stats.get("anchors"):
        how["anchors"] = [{"table_ms": a["table_ms"], "now_ms": a["now_ms"], "predicted_ms": a["predicted_ms"]}
                          for a in stats["anchors"]]
        out.update(anchored(stats["latency_ms"], predicted_ms, stats["anchors"]))
    return out
