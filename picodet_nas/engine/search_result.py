"""What a search result (`best.yaml`, as `nas evolve` writes it) tells a retrain besides its
architecture: the space it was searched in, the supernet and latency table it was searched
with, and its predicted latency and budget. Every field may be missing from a hand-written
file; a preset or an `Arch` is no search result at all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..arch import Arch, load_arch_file


@dataclass(frozen=True)
class SearchResult:
    """The fields of `best.yaml` besides its architecture (`space`, `provenance`, `scores`, as
    `evolution.report.write_best_yaml` writes them)."""

    path: Path
    space: Mapping[str, Any]  # {name, fingerprint}
    supernet: Path | None
    latency_table: Path | None
    predicted_latency_ms: float | None
    latency_budget_ms: float | None

    def latency_figures(self) -> dict[str, float]:
        """The predicted latency and the budget, where recorded, as `metrics.json` names them."""
        out = {}
        if self.predicted_latency_ms is not None:
            out["predicted_latency_ms"] = self.predicted_latency_ms
        if self.latency_budget_ms is not None:
            out["latency_budget_ms"] = self.latency_budget_ms
        return out


def _provenance_path(value: Any, base: Path) -> Path | None:
    """A path recorded in best.yaml: as written (nas evolve writes absolute paths), else
    relative to best.yaml's folder when that is where it exists."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    if not path.is_absolute() and not path.exists() and (base / path).exists():
        return base / path
    return path


def read_search_result(arch_spec: str | Path | Arch) -> SearchResult | None:
    """The search-result fields of an architecture file; None for a preset or an `Arch`."""
    if isinstance(arch_spec, Arch) or not Path(arch_spec).is_file():
        return None
    path = Path(arch_spec)
    _, doc = load_arch_file(path)

    def mapping(key: str) -> Mapping[str, Any]:
        return doc.get(key) if isinstance(doc.get(key), dict) else {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    provenance = mapping("provenance")
    return SearchResult(
        path=path, space=mapping("space"),
        supernet=_provenance_path(provenance.get("supernet"), path.parent),
        latency_table=_provenance_path(provenance.get("latency_table"), path.parent),
        predicted_latency_ms=number(mapping("scores").get("predicted_latency_ms")),
        latency_budget_ms=number(provenance.get("latency_budget_ms", provenance.get("budget_ms"))))
