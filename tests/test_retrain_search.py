"""`nas retrain best.yaml`: the end of the search loop. A search result's model is timed the way
its latency table was measured (by default), `--init supernet` starts from the inherited weights,
and every broken input (no arch, another space's supernet, no supernet, a moved table) is one line
and exit code 2 before anything is written.

Inputs: the toy space of the search tests (`tests/toy_search.py`) with a random-weight supernet and a
synthetic latency table relabelled as an ONNX Runtime table of this machine (5 repeats, so that
the test can see the table's settings being used), and 16 + 8 generated images.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from engine_helpers import TINY_TRAIN, load_json, nas, one_line_error
from toy_search import TOY_SPACE, make_toy_inputs, toy_supernet
from picodet_nas.arch import Arch
from picodet_nas.checkpoint import save_checkpoint
from picodet_nas.errors import CheckpointError, SpaceError
from picodet_nas.latency import LatencyPredictor
from picodet_nas.latency.table import load_table, save_table
from picodet_nas.space import SearchSpace, load_space
from supernet import Supernet
from supernet.inherit import inherited_weights

TRAIN = [*TINY_TRAIN, "--epochs", "1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain_search")
    inputs = make_toy_inputs(root)
    table = load_table(inputs.table)
    table["meta"].update(backend="onnxruntime", repeats=5, warmup=1, burst=1)  # timed here, cheaply
    save_table(table, inputs.table)
    return inputs


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_dict(TOY_SPACE)


def write_best(path: Path, space: SearchSpace, toy, *, arch: Arch | None = None, drop: tuple[str, ...] = (),
               fingerprint: str | None = None, provenance: dict | None = None) -> Path:
    """A best.yaml as nas evolve writes it (design.md keys), optionally damaged."""
    arch = arch or space.sample(random.Random(1))
    predicted = LatencyPredictor.from_file(toy.table).predict(arch)
    doc = {"arch": arch.to_dict(), "space": {"name": space.name, "fingerprint": fingerprint or space.fingerprint},
           "provenance": provenance if provenance is not None else {
               "supernet": str(toy.supernet), "latency_table": str(toy.table), "budget_ms": 1000.0, "seed": 0,
               "strategy": "ga"},
           "scores": {"map": 0.01, "predicted_latency_ms": predicted, "params": 1, "flops": 1.0}}
    for key in drop:
        doc.pop(key)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_retrain_of_a_search_result_measures_latency_like_its_table(toy, space, tmp_path):
    best = write_best(tmp_path / "best.yaml", space, toy)
    r = nas("retrain", str(best), "--data", str(toy.data), *TRAIN, "--init", "supernet", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "latency" in r.stdout and "measured" in r.stdout
    metrics = load_json(tmp_path / "r" / "metrics.json")
    for key in ("coco", "params", "flops", "epochs", "wall_time_s", "predicted_latency_ms", "measured_latency_ms",
                "latency_ratio", "latency_budget_ms", "budget_met"):
        assert key in metrics, key
    assert metrics["latency_ratio"] == pytest.approx(metrics["measured_latency_ms"] / metrics["predicted_latency_ms"],
                                                     rel=1e-3)
    assert metrics["budget_met"] is (metrics["measured_latency_ms"] <= 1000.0)
    timing = metrics["latency_measurement"]
    assert timing["latency_table"] == str(toy.table) and timing["repeats"] == 5 and timing["threads"] == 1
    assert timing["input_size"] == metrics["input_size"] and timing["samples"] >= 5
    # the table's validation subnets were timed beside the model: the machine's speed against the table's
    anchors = timing["anchors"]
    assert len(anchors) == 4 and all(a["now_ms"] > 0 and a["table_ms"] > 0 for a in anchors)
    speed = math.exp(sum(math.log(a["now_ms"] / a["table_ms"]) for a in anchors) / len(anchors))
    assert metrics["machine_speed"] == pytest.approx(speed, rel=1e-3)
    assert metrics["anchored_latency_ratio"] == pytest.approx(
        metrics["measured_latency_ms"] / (metrics["predicted_latency_ms"] * speed), rel=1e-2)
    assert "anchored" in r.stdout and "machine speed" in r.stdout
    assert metrics["init"] == "supernet"
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["init"] == "supernet" and config["init_from"] == str(toy.supernet)
    assert "starting from the weights of" in (tmp_path / "r" / "train.log").read_text()


def test_no_measure_latency_and_plain_arch_files(toy, space, tmp_path):
    best = write_best(tmp_path / "best.yaml", space, toy)
    r = nas("retrain", str(best), "--data", str(toy.data), *TRAIN, "--no-measure-latency", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = load_json(tmp_path / "a" / "metrics.json")
    assert "measured_latency_ms" not in metrics and "budget_met" not in metrics
    assert metrics["predicted_latency_ms"] > 0 and metrics["init"] == "scratch"


def test_inherited_weights_are_the_supernets_slice(toy, space):
    arch = space.sample(random.Random(3))
    state, meta = inherited_weights(toy.supernet, arch, space_fingerprint=space.fingerprint)
    reference = Supernet(space, meta["num_classes"])
    reference.load_state_dict(torch.load(toy.supernet, weights_only=True)["model"])
    expected = reference.extract(arch).state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    # another input size than the space's: same weights (the network is fully convolutional)
    other, _ = inherited_weights(toy.supernet, arch.replace(input_size=160))
    assert all(torch.equal(other[k], state[k]) for k in state)
    with pytest.raises(SpaceError, match="is not a subnet of the supernet"):
        inherited_weights(toy.supernet, arch.replace(neck_channels=32))
    with pytest.raises(SpaceError, match="the supernet must be the one the search used"):
        inherited_weights(toy.supernet, arch, space_fingerprint="0" * 16)


def test_supernet_checkpoints_without_their_space_definition(tmp_path):
    """Checkpoints written before the space's definition was recorded: found by name in
    search_spaces/, else a clear error."""
    quickstart = load_space("quickstart")
    path = tmp_path / "old.pt"
    save_checkpoint(path, Supernet(quickstart, 6).state_dict(), {"kind": "supernet", "space": quickstart.ref(),
                                                                "num_classes": 6}, epoch=0, metrics={})
    state, _ = inherited_weights(path, quickstart.smallest(), space_fingerprint=quickstart.fingerprint)
    assert "head.outputs.0.weight" in state
    toy_space = SearchSpace.from_dict(TOY_SPACE)
    save_checkpoint(path, toy_supernet(toy_space).state_dict(), {"kind": "supernet", "space": toy_space.ref(),
                                                                "num_classes": 6}, epoch=0, metrics={})
    with pytest.raises(CheckpointError, match="does not record its search space"):
        inherited_weights(path, toy_space.smallest())


def _no_arch(tmp, space, toy):
    return write_best(tmp / "b.yaml", space, toy, drop=("arch",)), [], "a search result without 'arch'"


def _foreign_space(tmp, space, toy):
    return (write_best(tmp / "b.yaml", space, toy, fingerprint="f" * 16), ["--init", "supernet"],
            "the supernet must be the one the search used")


def _no_supernet_named(tmp, space, toy):
    best = write_best(tmp / "b.yaml", space, toy, provenance={"latency_table": str(toy.table), "budget_ms": 1000.0})
    return best, ["--init", "supernet"], "names no supernet (provenance.supernet); pass --supernet CKPT"


def _supernet_missing(tmp, space, toy):
    best = write_best(tmp / "b.yaml", space, toy)
    return best, ["--init", "supernet", "--supernet", str(tmp / "gone.pt")], "gone.pt: checkpoint not found"


def _not_a_supernet(tmp, space, toy):
    best = write_best(tmp / "b.yaml", space, toy)
    save_checkpoint(tmp / "model.pt", {}, {"kind": "picodet"}, epoch=1, metrics={})
    return best, ["--init", "supernet", "--supernet", str(tmp / "model.pt")], "not a supernet"


def _table_missing(tmp, space, toy):
    prov = {"supernet": str(toy.supernet), "latency_table": str(tmp / "gone.json"), "budget_ms": 1000.0}
    return write_best(tmp / "b.yaml", space, toy, provenance=prov), [], "pass --no-measure-latency"


def _supernet_without_init(tmp, space, toy):
    return write_best(tmp / "b.yaml", space, toy), ["--supernet", str(toy.supernet)], "add --init supernet"


@pytest.mark.parametrize("case", [_no_arch, _foreign_space, _no_supernet_named, _supernet_missing, _not_a_supernet,
                                  _table_missing, _supernet_without_init])
def test_bad_search_results_fail_in_one_line_before_anything_is_written(toy, space, tmp_path, case):
    best, extra, needle = case(tmp_path, space, toy)
    r = nas("retrain", str(best), "--data", str(toy.data), *TRAIN, *extra, "--out", str(tmp_path / "run"))
    line = one_line_error(r)
    assert needle in line, line
    assert not (tmp_path / "run").exists()


def test_a_supernet_of_other_classes_is_refused(toy, space, tmp_path):
    """Inherited weights trained on other categories would predict the wrong classes."""
    path = tmp_path / "other.pt"
    ckpt = torch.load(toy.supernet, weights_only=True)
    meta = {**ckpt["meta"], "label_to_cat_id": [1, 2, 3, 5, 8, 14]}
    save_checkpoint(path, ckpt["model"], meta, epoch=0, metrics={})
    best = write_best(tmp_path / "b.yaml", space, toy)
    r = nas("retrain", str(best), "--data", str(toy.data), *TRAIN, "--init", "supernet", "--supernet", str(path),
            "--out", str(tmp_path / "run"))
    assert "inherited head would predict other classes" in one_line_error(r)
    assert not (tmp_path / "run").exists()
