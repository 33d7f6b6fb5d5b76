"""The inputs of a search, checked before anything is written: the latency budget, the latency
table (its predictor), the supernet's weights, and whether the supernet's classes are the
data's. Every check fails in one line (`UserError`), cheapest first."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from picodet_nas.checkpoint import load_model_weights
from picodet_nas.data.classes import Classes, check_same_classes
from picodet_nas.errors import SpaceError, UserError
from picodet_nas.latency.predictor import LatencyPredictor

from .budget import format_ms, parse_budget

if TYPE_CHECKING:
    from .data import Subsets


def file_digest(path: str | Path) -> str:
    """Short SHA-256 of a file's content: a resumed search must score with the same supernet
    and table, and `nas train-supernet` rewrites `supernet.pt` in place as it trains."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_inputs(supernet: str, latency_table: str, latency_budget: str,
                precision: str = "fp32") -> tuple[float, LatencyPredictor, dict, dict]:
    """(budget ms, predictor, supernet weights, supernet meta): an unparseable budget, an
    unreadable table, a table of another precision than the search's, a budget below the
    fastest subnet, an unreadable or foreign supernet are each a one-line error."""
    budget_ms = parse_budget(latency_budget)
    predictor = LatencyPredictor.from_file(latency_table)
    if predictor.precision != precision:
        raise UserError(f"{latency_table} times {predictor.precision} models but the search is for {precision} "
                        f"deployment (--precision {precision}): profile the device with --precision {precision}, "
                        f"or search with --precision {predictor.precision}")
    fastest = predictor.fastest_ms
    if budget_ms < fastest:
        raise UserError(f"latency budget {format_ms(budget_ms)} ms is below the fastest subnet of space "
                        f"{predictor.space.name!r}: the fastest achievable latency is {fastest:.3f} ms "
                        f"(predicted by {latency_table})")
    state, meta = load_model_weights(supernet, kind="supernet",
                                     needs="nas evolve needs the supernet.pt written by nas train-supernet")
    fingerprint = (meta.get("space") or {}).get("fingerprint")
    if fingerprint != predictor.space.fingerprint:
        raise SpaceError(f"{supernet} was trained on space {(meta.get('space') or {}).get('name')!r} (fingerprint "
                         f"{fingerprint}) but {latency_table} was measured for space {predictor.space.name!r} "
                         f"({predictor.space.fingerprint}): supernet and latency table must be of the same space")
    return budget_ms, predictor, state, meta


def check_classes(meta: dict, supernet: str, subsets: "Subsets", data: str) -> None:
    """The supernet was trained on the classes of the data it is to be scored on."""
    check_same_classes(Classes.of_checkpoint(meta, supernet), Classes.of(data, subsets.class_names,
                                                                        subsets.label_to_cat_id),
                       "score the supernet on the data it was trained on")
