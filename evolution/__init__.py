"""The latency-constrained evolutionary search behind `nas evolve`.

* `run_evolve(EvolveConfig(...))`: a whole search (or its resumption) with its outputs.
* `parse_budget`: '17ms', '17 ms', '17', '0.017s' -> 17.0.
* `GAProposer` / `NSGA2Proposer`: which candidates a generation scores (SPOS-style GA, or
  Optuna's NSGA-II), pure functions of (seed, generation, earlier scores).
* `CandidateScorer`: one candidate's supernet mAP (inherited weights, exact BN recalibration,
  COCO mAP on a fixed held-out subset); `InProcessPool` / `RayPool` run it.
* `SearchHistory`: every score in an Optuna study (SQLite by default).

Dependencies point one way: evolution -> supernet -> picodet_nas. Names are imported on first
use (PEP 562), so that importing the package (and `nas --help`) does not import PyTorch or Ray.
"""

import importlib

_EXPORTS = {
    "EvolveConfig": "settings", "EvolveResult": "search", "run_evolve": "search",
    "parse_budget": "budget",
    "GAProposer": "proposers", "NSGA2Proposer": "proposers", "Proposal": "proposers", "STRATEGIES": "proposers",
    "Constraint": "operators", "FeasibleSampler": "operators", "GenomeSpace": "operators",
    "CandidateScorer": "scoring", "ScoringData": "scoring",
    "InProcessPool": "pools", "RayPool": "pools", "RaySession": "pools",
    "SearchHistory": "history", "Scored": "history",
    "pareto_front": "report", "best_of": "report",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
