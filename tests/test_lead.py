"""The search's lead check (`evolution.lead`): the paired score difference of the winner and the
best in-budget uniform-width network, its delete-half jackknife standard error on hand-made
detections, the keep-or-return rule, and a search that returns the uniform network when the
lead is below `--min-lead-z`."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
from pycocotools.coco import COCO

import evolution.lead as lead_mod
from evolution.lead import decide, jackknife_halves, load_previous, paired_lead, save, subset_map, uniform_in_budget
from evolution.search import reference_archs, run_evolve
from evolution.settings import EvolveConfig
from evolution.operators import GenomeSpace
from picodet_nas.arch import load_arch_file
from picodet_nas.cli.main import main
from picodet_nas.latency import LatencyPredictor
from test_evolution import SMALL, cli_args, one_line_error
from toy_search import make_toy_inputs


def ground_truth(n: int) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": 100, "height": 100} for i in range(1, n + 1)],
                    "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                                     "iscrowd": 0} for i in range(1, n + 1)],
                    "categories": [{"id": 1, "name": "box"}]}
    coco.createIndex()
    return coco


def detections(coco: COCO, hit: set[int]) -> tuple:
    """A network that finds the box exactly on the images `hit` and misses it elsewhere."""
    ids = coco.getImgIds()
    dets = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 40, 40] if i in hit else [60, 60, 30, 30], "score": 0.9}
            for i in ids]
    return coco, dets, list(ids)


def test_subset_map_counts_only_the_given_images():
    coco = ground_truth(8)
    d = detections(coco, {1, 2, 3, 4})
    assert subset_map(d, [1, 2, 3, 4]) == pytest.approx(1.0)
    assert subset_map(d, [5, 6, 7, 8]) == pytest.approx(0.0)
    assert subset_map(d, list(range(1, 9))) == pytest.approx(0.5, abs=0.02)


def test_halves_are_reproducible_halves():
    ids = list(range(10))
    parts = jackknife_halves(ids, 5, seed=3)
    assert parts == jackknife_halves(list(reversed(ids)), 5, seed=3)
    assert all(len(p) == 5 and len(set(p)) == 5 and set(p) <= set(ids) for p in parts)


def test_identical_networks_lead_by_nothing_and_are_not_kept():
    coco = ground_truth(12)
    d = detections(coco, {1, 2, 3, 4, 5, 6})
    figures = paired_lead(d, d, halves=10)
    assert figures["lead"] == 0 and figures["lead_se"] == 0 and figures["z"] == 0
    assert not decide("a", "b", figures, 2.0).kept


def test_a_clearly_better_network_leads_by_many_standard_errors():
    coco = ground_truth(40)
    better = detections(coco, set(range(1, 37)))  # finds 36 of 40 boxes
    worse = detections(coco, set(range(1, 11)))  # finds 10 of them, the same first ones
    figures = paired_lead(better, worse, halves=30, seed=1)
    assert figures["lead"] == pytest.approx(figures["map"] - figures["reference_map"]) and figures["lead"] > 0.5
    assert figures["z"] > 5 and figures["images"] == 40 and figures["halves"] == 30
    check = decide("w", "u", figures, 2.0)
    assert check.kept and check.chosen == "w" and "the winner stays" in check.line()
    assert not decide("w", "u", figures, figures["z"] + 1).kept  # the rule is z >= min_z
    back = decide("u", "w", paired_lead(worse, better, halves=30, seed=1), 2.0)
    assert not back.kept and back.chosen == "w" and back.lead < 0


def test_a_small_lead_on_few_images_is_a_tie():
    coco = ground_truth(20)
    a = detections(coco, {1, 2, 3, 4, 5, 6, 7, 8, 9})
    b = detections(coco, {1, 2, 3, 4, 5, 6, 7, 8, 10, 11})  # one box more, another one less... and one more
    figures = paired_lead(b, a, halves=40)
    assert 0 < figures["lead"] < 0.1 and figures["z"] < 2
    assert not decide("b", "a", figures, 2.0).kept


def test_networks_scored_on_other_images_or_too_few_are_refused():
    coco = ground_truth(8)
    a = detections(coco, {1})
    b = (coco, a[1], a[2][:-1])
    with pytest.raises(ValueError, match="different images"):
        paired_lead(a, b)
    with pytest.raises(ValueError, match="at least 4 images"):
        paired_lead(detections(ground_truth(3), {1}), detections(ground_truth(3), {2}))
    with pytest.raises(ValueError, match="2 halves"):
        paired_lead(a, a, halves=1)


def test_lead_json_is_reused_only_for_the_same_pair_images_halves_and_supernet(tmp_path):
    coco = ground_truth(12)
    figures = paired_lead(detections(coco, set(range(1, 12))), detections(coco, {1}), halves=8)
    check = decide("w", "u", figures, 2.0)
    path = tmp_path / "lead.json"
    save(path, check, figures, "sha")
    same = dict(winner="w", reference="u", images=12, halves=8, supernet_sha="sha")
    back = load_previous(path, **same)
    assert back is not None and back["lead"] == figures["lead"] and back["z"] == figures["z"]
    for change in (dict(winner="x"), dict(reference="v"), dict(images=11), dict(halves=9), dict(supernet_sha="s2")):
        assert load_previous(path, **{**same, **change}) is None
    path.write_text("{broken")
    assert load_previous(path, **same) is None


class Rec:
    def __init__(self, key, m, ms, role="candidate"):
        self.key, self.map, self.predicted_latency_ms, self.role = key, m, ms, role

    def rank_key(self):
        return (-self.map, self.predicted_latency_ms, self.key)


def test_the_reference_is_the_best_scored_uniform_network_in_budget():
    recs = [Rec("u1", 0.3, 5.0), Rec("u2", 0.2, 3.0), Rec("u3", 0.25, 3.5, "reference"), Rec("x", 0.9, 1.0)]
    assert uniform_in_budget(recs, {"u1", "u2", "u3"}, 4.0).key == "u3"
    assert uniform_in_budget(recs, {"u1", "u2", "u3"}, 6.0).key == "u1"
    assert uniform_in_budget(recs, {"u1"}, 4.0) is None


# ---------------------------------------------------------------------------- in a search
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_inputs(tmp_path_factory.mktemp("toy_lead"))


def test_a_lead_below_min_lead_z_returns_the_uniform_network(toy, tmp_path):
    out = tmp_path / "strict"
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget="4ms",
                       data=str(toy.data), workers=0, out=str(out), min_lead_z=1e6, lead_halves=8, **SMALL)
    result = run_evolve(cfg, progress=False)
    predictor = LatencyPredictor.from_file(toy.table)
    uniform = {a.key() for a in reference_archs(GenomeSpace(predictor.space, predictor.input_sizes))}
    arch, doc = load_arch_file(out / "best.yaml")
    # the toy search (seed 0) ends with a mixed-width winner, so its lead is checked
    lead = json.loads((out / "lead.json").read_text())
    assert lead["winner"] not in uniform
    check = doc["lead_check"]
    assert check["kept"] is False and check["min_z"] == 1e6 and check["images"] == 8 and check["halves"] == 8
    assert arch.key() == check["reference"] == lead["reference"] and arch.key() in uniform
    assert doc["scores"]["predicted_latency_ms"] <= 4.0 and result.best.key == arch.key()
    assert math.isclose(check["lead"], check["map"] - check["reference_map"], abs_tol=1e-12)
    rows = list(csv.DictReader(open(out / "pareto.csv")))
    chosen = [r for r in rows if int(r["chosen"])]
    assert len(chosen) == 1 and chosen[0]["arch_key"] == arch.key()
    assert "returning the uniform network" in result.summary

    # a resumed search reads the lead back instead of scoring the pair again
    def no_rescoring(*a, **k):
        raise AssertionError("the pair was scored again")

    lead_mod.paired_lead, saved = no_rescoring, lead_mod.paired_lead
    try:
        again = run_evolve(EvolveConfig(**{**cfg.__dict__, "resume": True}), progress=False)
    finally:
        lead_mod.paired_lead = saved
    assert again.best.key == arch.key()


def test_the_lead_check_off_keeps_the_searched_winner(toy, tmp_path):
    out = tmp_path / "off"
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget="4ms",
                       data=str(toy.data), workers=0, out=str(out), min_lead_z=0, **SMALL)
    result = run_evolve(cfg, progress=False)
    _, doc = load_arch_file(out / "best.yaml")
    assert "lead_check" not in doc and not (out / "lead.json").exists()
    assert result.best.role == "candidate"


@pytest.mark.parametrize("flag, value, message", [("--min-lead-z", "-1", "min-lead-z"),
                                                  ("--min-lead-z", "inf", "min-lead-z"),
                                                  ("--lead-halves", "1", "lead-halves")])
def test_bad_lead_settings_are_one_line(toy, tmp_path, capsys, flag, value, message):
    assert main(cli_args(toy, tmp_path / "bad", flag, value)) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "bad").exists()


def test_random_seed_does_not_change_the_halves():
    random.seed(123)
    a = jackknife_halves(range(20), 3, seed=0)
    random.seed(456)
    assert jackknife_halves(range(20), 3, seed=0) == a
