"""Anchoring a measurement to the machine speed a latency table was built at
(`latency.anchors`): which validation subnets are chosen, the speed factor and the anchored
ratio on hand-made figures, and the drift line."""

from __future__ import annotations

import math

import pytest

from picodet_nas.engine.measure import measurement_fields
from picodet_nas.latency.anchors import anchored, describe, drift_line, drift_note, speed_factor, table_anchors


def sample(pred: float, measured: float, size: int = 192) -> dict:
    return {"arch": {"input_size": size, "tag": pred}, "predicted_ms": pred, "measured_ms": measured}


TABLE = {"validation": {"samples": [sample(p, p * 1.01) for p in (1.0, 1.2, 1.5, 1.9, 2.4, 3.0)]}}


def test_anchors_are_the_validation_subnets_nearest_in_predicted_latency():
    chosen = table_anchors(TABLE, 1.6, count=3)
    assert sorted(a["predicted_ms"] for a in chosen) == [1.2, 1.5, 1.9]
    assert all(a["table_ms"] == pytest.approx(a["predicted_ms"] * 1.01) for a in chosen)
    assert [a["predicted_ms"] for a in table_anchors(TABLE, 100.0, count=2)] == [3.0, 2.4]


def test_without_a_prediction_anchors_spread_over_the_range():
    chosen = [a["predicted_ms"] for a in table_anchors(TABLE, None, count=3)]
    assert chosen == [1.0, 1.5, 2.4]


def test_no_validation_no_anchors_and_bad_counts_refused():
    assert table_anchors({}, 1.0) == [] and table_anchors({"validation": {}}, 1.0) == []
    assert table_anchors(TABLE, 1.0, count=0) == []
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="anchors"):
            table_anchors(TABLE, 1.0, count=bad)


def test_speed_factor_is_the_geometric_mean_of_now_over_then():
    assert speed_factor([2.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert speed_factor([1.3, 2.6], [1.0, 2.0]) == pytest.approx(1.3)
    with pytest.raises(ValueError):
        speed_factor([], [])
    with pytest.raises(ValueError):
        speed_factor([1.0], [1.0, 2.0])


def test_anchored_ratio_takes_the_machines_drift_out():
    # the machine runs 30% slower than when the table was built; the predictor itself is 2% high
    anchors = [{"table_ms": t, "now_ms": t * 1.3} for t in (1.0, 1.5, 2.0)]
    out = anchored(1.3 * 0.98 * 1.5, 1.5, anchors)
    assert out["machine_speed"] == pytest.approx(1.3)
    assert out["anchored_latency_ratio"] == pytest.approx(0.98, abs=1e-4)
    assert out["latency_at_table_speed_ms"] == pytest.approx(0.98 * 1.5, abs=1e-4)
    assert anchored(1.0, 1.0, []) == {}
    assert "anchored_latency_ratio" not in anchored(1.0, None, anchors)


def test_drift_line_only_beyond_five_percent():
    assert drift_line(1.04, 4) is None and drift_line(0.96, 4) is None
    assert "30% slower" in drift_line(1.3, 4) and "4 of its validation subnets" in drift_line(1.3, 4)
    assert "20% faster" in drift_line(0.8, 2)


def test_measurement_fields_keep_the_raw_ratio_beside_the_anchored_one():
    stats = {"latency_ms": 2.6, "statistic": "median", "p10_ms": 2.5, "p90_ms": 2.8, "samples": 40,
             "anchors": [{"table_ms": 1.0, "now_ms": 1.3, "predicted_ms": 1.0, "arch": {}},
                         {"table_ms": 2.0, "now_ms": 2.6, "predicted_ms": 2.0, "arch": {}}]}
    out = measurement_fields(stats, 2.0, 2.5, {"latency_table": "t.json"})
    assert out["measured_latency_ms"] == 2.6 and out["latency_ratio"] == pytest.approx(1.3)
    assert out["budget_met"] is False  # the budget is judged on what was measured, drift and all
    assert out["machine_speed"] == pytest.approx(1.3) and out["anchored_latency_ratio"] == pytest.approx(1.0)
    assert [a["now_ms"] for a in out["latency_measurement"]["anchors"]] == [1.3, 2.6]
    assert "arch" not in out["latency_measurement"]["anchors"][0]
    plain = measurement_fields({**stats, "anchors": []}, None, None, {})
    assert set(plain) == {"measured_latency_ms", "latency_measurement"}
    assert math.isclose(plain["latency_measurement"]["p90_ms"], 2.8)


def test_describe_and_drift_note_read_the_metrics():
    metrics = {"latency_ratio": 1.3, "anchored_latency_ratio": 1.01, "machine_speed": 1.29,
               "latency_measurement": {"anchors": [{}, {}, {}, {}]}}
    assert describe(metrics) == "; measured / predicted 1.300 (anchored 1.010, machine speed 1.290)"
    assert "29% slower" in drift_note(metrics) and "4 of its validation subnets" in drift_note(metrics)
    assert describe({"latency_ratio": 0.9}) == "; measured / predicted 0.900" and describe({}) == ""
    assert drift_note({"latency_ratio": 0.9}) is None
