"""Is the winner's lead over the best hand-designed network more than the scores resolve?

A search ranks candidates by supernet mAP on a fixed set of search-split images. Two subnets
whose scores differ by less than the scores' own sampling error are a tie: on other images of
the same distribution the order would often flip, and retraining then decides by chance
(README, "Search gain": a lead of 0.0004 with a standard error of 0.0005 retrained 0.035
worse). So before `best.yaml` is written the winner is compared with the best uniform-width
network that meets the budget, on the same images: the standard error of the paired
difference comes from the delete-half jackknife (the difference recomputed on random halves
of the images; for halves, (n - d) / d = 1, so their standard deviation estimates the standard
error on all n images). Only a lead of at least `min_z` standard errors keeps the searched
winner; otherwise the search returns the hand-designed network, which needs no search to
trust. The figures go into `lead.json` (kept for a resumed search) and `best.yaml`.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from picodet_nas.evaluation import coco_evaluate
from picodet_nas.utils.io import atomic_write_text

LEAD_FILE = "lead.json"

# (ground-truth COCO, detections, scored image ids): what `NetworkScorer.detect` returns
Detections = tuple[Any, list, list]


def subset_map(detections: Detections, image_ids: Sequence[int]) -> float:
    """COCO mAP@[.5:.95] of `detections` on the images `image_ids` only."""
    coco, dets, _ = detections
    keep = set(image_ids)
    return coco_evaluate(coco, [d for d in dets if d["image_id"] in keep], sorted(keep))["mAP"]


def jackknife_halves(image_ids: Sequence[int], halves: int, seed: int) -> list[list[int]]:
    """`halves` random halves of `image_ids` (the same for one seed and image list)."""
    ids = sorted(image_ids)
    rng = random.Random(seed)
    return [rng.sample(ids, len(ids) // 2) for _ in range(halves)]


def paired_lead(a: Detections, b: Detections, halves: int = 50, seed: int = 0) -> dict[str, float]:
    """mAP of `a` and of `b` on their scored images, the lead a - b, the delete-half jackknife
    standard error of each score and of the lead, and z = lead / its standard error (inf when
    the halves never disagree and the lead is positive)."""
    ids = a[2]
    if sorted(ids) != sorted(b[2]):
        raise ValueError("paired_lead: the two networks were scored on different images")
    if len(ids) < 4 or halves < 2:
        raise ValueError(f"paired_lead: needs at least 4 images and 2 halves, got {len(ids)} and {halves}")
    map_a, map_b = subset_map(a, ids), subset_map(b, ids)
    parts = jackknife_halves(ids, halves, seed)
    half_a = [subset_map(a, h) for h in parts]
    half_b = [subset_map(b, h) for h in parts]
    se_lead = statistics.stdev([x - y for x, y in zip(half_a, half_b)])
    lead = map_a - map_b
    z = lead / se_lead if se_lead > 0 else (math.inf if lead > 0 else (0.0 if lead == 0 else -math.inf))
    return {"map": map_a, "reference_map": map_b, "lead": lead, "se": statistics.stdev(half_a),
            "reference_se": statistics.stdev(half_b), "lead_se": se_lead, "z": z, "images": len(ids),
            "halves": halves}


@dataclass(frozen=True)
class LeadCheck:
    """The outcome of comparing the search's winner with the best in-budget uniform network."""

    winner: str  # arch keys
    reference: str
    images: int
    halves: int
    min_z: float
    map: float
    reference_map: float
    lead: float
    lead_se: float
    z: float
    kept: bool  # True: the winner stays; False: the search returns the reference

    @property
    def chosen(self) -> str:
        return self.winner if self.kept else self.reference

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["z"] = _finite(self.z)
        return out

    @property
    def z_text(self) -> str:
        return ("+inf" if self.z > 0 else "-inf") if math.isinf(self.z) else f"{self.z:+.2f}"

    def line(self) -> str:
        z = self.z_text
        verdict = ("the winner stays" if self.kept else
                   f"below --min-lead-z {self.min_z:g}: the search returns the uniform-width network")
        return (f"lead over the best uniform-width network in the budget ({self.reference}): {self.lead:+.4f} mAP "
                f"(standard error {self.lead_se:.4f}, z {z}, {self.images} images): {verdict}")


def _finite(z: float) -> float | str:
    return z if math.isfinite(z) else ("inf" if z > 0 else "-inf")


def decide(winner: str, reference: str, figures: dict[str, float], min_z: float) -> LeadCheck:
    """Keep the winner when its lead is at least `min_z` standard errors (and positive)."""
    kept = figures["lead"] > 0 and figures["z"] >= min_z
    return LeadCheck(winner=winner, reference=reference, images=int(figures["images"]), halves=int(figures["halves"]),
                     min_z=float(min_z), map=figures["map"], reference_map=figures["reference_map"],
                     lead=figures["lead"], lead_se=figures["lead_se"], z=figures["z"], kept=kept)


def load_previous(path: Path, *, winner: str, reference: str, images: int, halves: int, supernet_sha: str
                  ) -> dict[str, float] | None:
    """The figures an earlier run of this search kept in `lead.json`, if made for the same pair,
    images, halves and supernet."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = (doc.get("winner") == winner and doc.get("reference") == reference and doc.get("images") == images
            and doc.get("halves") == halves and doc.get("supernet_sha256") == supernet_sha)
    if not same:
        return None
    figures = dict(doc["figures"])
    figures["z"] = float(figures["z"])  # "inf" reads back as inf
    return figures


def save(path: Path, check: LeadCheck, figures: dict[str, float], supernet_sha: str) -> None:
    atomic_write_text(path, json.dumps({**check.to_dict(), "supernet_sha256": supernet_sha,
                                        "figures": {**figures, "z": _finite(figures["z"])}}, indent=2))


def uniform_in_budget(records, uniform_keys: set[str], budget_ms: float):
    """The best-scored uniform-width network that meets the budget among `records` (candidates
    first: a seeded one is the same network as its reference), or None."""
    pool = [r for r in records if r.key in uniform_keys and r.predicted_latency_ms <= budget_ms]
    return min(pool, key=lambda r: (r.rank_key(), r.role != "candidate")) if pool else None


def check_lead(cfg, winner, history, subsets, uniform_keys: set[str], budget_ms: float, space_definition: dict,
               num_classes: int, state: dict, run_dir: Path, supernet_sha: str, log) -> LeadCheck | None:
    """Compare `winner` (a `Scored`) with the best in-budget uniform-width network on the
    re-scoring images (else the scoring images); None when the check is off (`min_lead_z` 0),
    the winner is itself uniform, or no uniform network meets the budget."""
    from .scoring import CandidateScorer
    from .settings import driver_device

    if not cfg.min_lead_z or winner is None:
        return None
    if winner.key in uniform_keys:
        log.info("the winner is a uniform-width network: no lead to check")
        return None
    reference = uniform_in_budget([*history.candidates(), *history.references()], uniform_keys, budget_ms)
    if reference is None:
        log.info("no uniform-width network meets the budget: the winner's lead is not checked")
        return None
    data, images = (subsets.rescore, subsets.rescore_images) if subsets.rescore is not None else (
        subsets.data, subsets.val_images)
    path = run_dir / LEAD_FILE
    figures = load_previous(path, winner=winner.key, reference=reference.key, images=images, halves=cfg.lead_halves,
                            supernet_sha=supernet_sha)
    if figures is None:
        import torch

        scorer = CandidateScorer(space_definition, num_classes, state, data, cfg.threads_per_worker,
                                 device=driver_device(cfg))
        with torch.no_grad():
            a = scorer.scorer.detect(scorer.supernet.extract(winner.arch), winner.arch.input_size)
            b = scorer.scorer.detect(scorer.supernet.extract(reference.arch), reference.arch.input_size)
        figures = paired_lead(a, b, halves=cfg.lead_halves, seed=cfg.data_seed)
    check = decide(winner.key, reference.key, figures, cfg.min_lead_z)
    save(path, check, figures, supernet_sha)
    (log.info if check.kept else log.warning)("%s", check.line())
    return check
