"""Re-scoring the best candidates of a search on more search-split images than the search
scored each candidate on, so that the chosen architecture is not one that a small scoring
subset happened to favour. Runs in this process once the generations are done; each score is
kept in `rescored.json` as it arrives, so that a resumed search does not score it twice."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from picodet_nas.utils.io import atomic_write_text

from .data import Subsets
from .history import Scored, SearchHistory
from .scoring import CandidateScorer
from .settings import EvolveConfig, driver_device

RESCORED_FILE = "rescored.json"


def _top(history: SearchHistory, k: int) -> list[Scored]:
    """The `k` best distinct candidates."""
    top: list[Scored] = []
    seen: set[str] = set()
    for c in sorted(history.candidates(), key=Scored.rank_key):
        if c.key not in seen:
            seen.add(c.key)
            top.append(c)
        if len(top) == k:
            break
    return top


def _previous(path: Path, images: int, supernet_sha: str) -> dict:
    """The scores an earlier run of this search kept, if made on the same images and supernet."""
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if previous.get("images") == images and previous.get("supernet_sha256") == supernet_sha:
        return dict(previous.get("scores", {}))
    return {}


def rescore(cfg: EvolveConfig, history: SearchHistory, subsets: Subsets, space_definition: dict, num_classes: int,
            state: dict, run_dir: Path, supernet_sha: str, log: logging.Logger) -> dict | None:
    """Score the `rescore_top` best candidates again on the re-scoring set; {"images", "scores":
    {key: {map, map50, search_map}}}, or None when there is nothing to re-score."""
    if not cfg.rescore_top or subsets.rescore is None:
        if cfg.rescore_top:
            log.info("no re-scoring: the search already scored on all %d search-split images", subsets.val_images)
        return None
    top = _top(history, cfg.rescore_top)
    if not top:
        return None
    path = run_dir / RESCORED_FILE
    done = _previous(path, subsets.rescore_images, supernet_sha)
    todo = [c for c in top if c.key not in done]
    if todo:
        scorer = CandidateScorer(space_definition, num_classes, state, subsets.rescore, cfg.threads_per_worker,
                                 device=driver_device(cfg))
        for c in todo:
            result = scorer.score(c.arch)
            done[c.key] = {"map": result["map"], "map50": result["map50"], "search_map": c.map}
            log.info("re-scored %s on %d search-split images: mAP %.4f (search score %.4f)", c.key,
                     subsets.rescore_images, result["map"], c.map)
            atomic_write_text(path, json.dumps({"images": subsets.rescore_images, "supernet_sha256": supernet_sha,
                                                "scores": done}, indent=2))
    return {"images": subsets.rescore_images, "scores": {c.key: done[c.key] for c in top}}
