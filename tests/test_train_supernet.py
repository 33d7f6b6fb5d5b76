"""`nas train-supernet` on a tiny space: supernet.pt with the space fingerprint, metrics.csv with
the largest/smallest subnets' mAP, exact resume after SIGKILL, a checkpoint of another space
refused, torchrun with two processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from engine_helpers import (TINY_SPACE, TINY_TRAIN, assert_same_state, kill_mid_epoch, metric_rows, nas,
                            one_line_error, popen_nas, shapes, torchrun, write)
from picodet_nas.space import SearchSpace

SUPERNET_TRAIN = [*TINY_TRAIN, "--calib-images", "8"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("supernet")
    shapes(root / "data", train=24, val=8)  # 8 held out as the search split, 16 to train on
    write(root / "tiny_space.yaml", TINY_SPACE)
    write(root / "other_space.yaml", TINY_SPACE.replace("neck_channels: [16, 24]", "neck_channels: [16, 32]"))
    return root


@pytest.fixture(scope="module")
def sandwich_run(work) -> Path:
    r = nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", *SUPERNET_TRAIN,
            "--strategy", "sandwich", "--num-random", "1", "--distill", "1.0", "--out", "sandwich", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "sandwich"


def test_supernet_checkpoint_and_landmark_metrics(work, sandwich_run):
    space = SearchSpace.from_dict(yaml.safe_load(TINY_SPACE))
    ckpt = torch.load(sandwich_run / "supernet.pt", map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    assert meta["kind"] == "supernet" and meta["space"] == {"name": "tiny", "fingerprint": space.fingerprint}
    assert meta["config"]["epochs"] == 2 and meta["supernet_options"]["strategy"] == "sandwich"
    assert meta["label_to_cat_id"] == [1, 2, 3, 5, 8, 13]
    last = torch.load(sandwich_run / "last.pt", map_location="cpu", weights_only=True)
    assert_same_state(ckpt["model"], last["ema"])  # supernet.pt holds the EMA weights
    assert last["step"] == 2 * 8
    rows = list(csv.DictReader((sandwich_run / "metrics.csv").open()))
    assert len(rows) == 2
    for key in ("largest_mAP", "largest_mAP50", "smallest_mAP", "smallest_mAP50"):
        assert 0.0 <= float(rows[-1][key]) <= 1.0
    assert all(float(r["loss_kd"]) > 0 for r in rows)  # --distill: the largest subnet taught the others
    log = (sandwich_run / "train.log").read_text()
    assert "largest_mAP" in log and "smallest_mAP" in log


def test_search_split_is_held_out_from_training_and_apart_from_validation(work, sandwich_run):
    """The supernet trains on 16 of the 24 training images; the 8 others are its search split, recorded
    in supernet.pt; no image of the split is trained on, and none is a validation image."""
    meta = torch.load(sandwich_run / "supernet.pt", map_location="cpu", weights_only=True)["meta"]
    split = meta["search_split"]
    trained = json.loads((sandwich_run / "data" / "supernet_train.json").read_text())
    held = json.loads((sandwich_run / "data" / "search.json").read_text())
    full = json.loads((work / "data" / "annotations" / "instances_train.json").read_text())
    val = json.loads((work / "data" / "annotations" / "instances_val.json").read_text())
    assert sorted(img["id"] for img in held["images"]) == split["held_out_ids"] and len(split["held_out_ids"]) == 8
    assert len(trained["images"]) == 16 and split["train_images"] == 16
    files = {name: {img["file_name"] for img in doc["images"]} for name, doc in
             (("trained", trained), ("held", held), ("full", full), ("val", val))}
    assert files["trained"] | files["held"] == files["full"] and not files["trained"] & files["held"]
    assert not files["held"] & files["val"]
    assert all(a["image_id"] in set(split["held_out_ids"]) for a in held["annotations"]) and held["annotations"]
    assert "search split: 8 of 24 training images held out" in (sandwich_run / "train.log").read_text()


def test_checkpoint_of_another_space_is_refused(work, sandwich_run):
    line = one_line_error(nas("train-supernet", "--space", "other_space.yaml", "--data", "data",
                              "--resume", str(sandwich_run), cwd=work))
    assert "belongs to another search space" in line and "last.pt" in line


def test_resume_names_every_differing_setting_in_one_line(work, sandwich_run):
    """A sampling option (--strategy) and a training option (--seed) that differ from the resumed
    run's are named together, and nothing of the run changes."""
    before = (sandwich_run / "last.pt").stat().st_mtime_ns
    line = one_line_error(nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", "--strategy",
                              "uniform", "--seed", "7", "--resume", str(sandwich_run), cwd=work))
    assert "--seed 7 and --strategy uniform differ from the resumed run's" in line, line
    assert (sandwich_run / "last.pt").stat().st_mtime_ns == before


def test_config_file_and_unknown_key(work):
    write(work / "bad.yaml", "space: tiny_space.yaml\nepoch: 2\n")
    line = one_line_error(nas("train-supernet", "-c", "bad.yaml", "--data", "data", cwd=work))
    assert "unknown key 'epoch' (did you mean 'epochs'?)" in line
    write(work / "bad2.yaml", "space: tiny_space.yaml\nstrategy: greedy\n")
    assert "strategy: 'greedy' is not one of" in one_line_error(
        nas("train-supernet", "-c", "bad2.yaml", "--data", "data", cwd=work))
    assert "--distill needs --strategy sandwich" in one_line_error(
        nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", "--distill", "1", cwd=work))
    assert "--bn-freeze-epochs is for nas retrain only" in one_line_error(
        nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", "--bn-freeze-epochs", "1", cwd=work))


def test_sigkill_then_resume_continues_from_the_last_checkpoint(work):
    """Uniform sampling from a -c config file; the resumed run matches an uninterrupted one."""
    write(work / "cfg.yaml", "space: tiny_space.yaml\nepochs: 3\nbatch-size: 2\nlr: 2e-2\nstrategy: uniform\n")
    args = ["train-supernet", "-c", "cfg.yaml", "--data", "data", *SUPERNET_TRAIN, "--epochs", "3"]
    r = nas(*args, "--out", "straight", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    proc = popen_nas(*args, "--out", "killed", cwd=work)
    kill_mid_epoch(proc, work / "killed" / "train.log", "epoch 2/3 step 2/8")
    assert torch.load(work / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    r = nas(*args, "--out", "killed", "--resume", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming killed" in (work / "killed" / "train.log").read_text()
    a = torch.load(work / "straight" / "supernet.pt", weights_only=True)
    b = torch.load(work / "killed" / "supernet.pt", weights_only=True)
    assert_same_state(a["model"], b["model"])
    assert a["epoch"] == b["epoch"] == 3
    assert metric_rows(work / "straight") == metric_rows(work / "killed")


def test_train_supernet_under_torchrun_two_processes(work):
    r = nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", *SUPERNET_TRAIN, "--epochs", "1",
            "--strategy", "sandwich", "--out", "ddp", cwd=work, launcher=torchrun(2))
    assert r.returncode == 0, r.stderr[-4000:]
    last = torch.load(work / "ddp" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["step"] == 4
    assert (work / "ddp" / "supernet.pt").is_file()
    assert len(list(csv.DictReader((work / "ddp" / "metrics.csv").open()))) == 1


def test_split_seed_and_per_depth_outputs(work, sandwich_run):
    """--split-seed holds out the images of that seed whatever the training seed; --head-per-depth
    all gives the head towers and output convs of its own for each depth, recorded in supernet.pt."""
    r = nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", *SUPERNET_TRAIN, "--epochs", "1",
            "--seed", "5", "--split-seed", "0", "--head-per-depth", "all", "--out", "per-depth", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(work / "per-depth" / "supernet.pt", map_location="cpu", weights_only=True)
    reference = torch.load(sandwich_run / "supernet.pt", map_location="cpu", weights_only=True)["meta"]
    assert ckpt["meta"]["search_split"]["held_out_ids"] == reference["search_split"]["held_out_ids"]
    assert ckpt["meta"]["config"]["seed"] == 5 and ckpt["meta"]["head_per_depth"] == "all"
    assert ckpt["meta"]["supernet_options"]["head_per_depth"] == "all"
    assert any(k.startswith("head.shallow_outputs.1.") for k in ckpt["model"])
    assert any(k.startswith("head.shallow_towers.1.0.1.") for k in ckpt["model"])
    assert "--split-seed must be an integer >= 0" in one_line_error(
        nas("train-supernet", "--space", "tiny_space.yaml", "--data", "data", "--split-seed", "-1", cwd=work))
