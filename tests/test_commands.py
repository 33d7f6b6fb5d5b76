"""`nas make-dataset / retrain / eval / predict` end to end on tiny data: outputs and their key
names, eval numbers equal to the retrain's, odd-but-valid data, bad data (exit 2, one line,
nothing written over earlier results)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from engine_helpers import (TINY_ARCH, TINY_TRAIN, add_bad_boxes, load_json, make_odd_dataset, nas, one_line_error,
                            shapes, write)
from picodet_nas.arch import load_arch_file, save_arch
from picodet_nas.cli.main import main
from picodet_nas.evaluation import STAT_KEYS


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("commands")
    shapes(root / "data")
    write(root / "tiny.yaml", TINY_ARCH)
    return root


@pytest.fixture(scope="module")
def trained(work) -> Path:
    """One tiny retrain (2 epochs) of a search result, shared by the tests that read its outputs."""
    arch, _ = load_arch_file(work / "tiny.yaml")
    save_arch(arch, work / "best.yaml", extra={"provenance": {"latency_budget_ms": 1000.0, "seed": 0},
                                               "scores": {"map": 0.1, "predicted_latency_ms": 0.7}})
    # the recipe from an experiment file's retrain: section (the flags' TINY_TRAIN), the name from a flag
    write(work / "exp.yaml", "data: data\nretrain:\n  arch: best.yaml\n  measure-latency: true\n" + "".join(
        f"  {k[2:]}: {v}\n" for k, v in zip(TINY_TRAIN[::2], TINY_TRAIN[1::2])))
    r = nas("retrain", "-c", "exp.yaml", "--name", "t", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "runs" / "retrain" / "t"


def test_retrain_outputs_and_key_names(trained):
    for name in ("config.yaml", "train.log", "metrics.csv", "last.pt", "best.pt", "model.pt", "model.onnx",
                 "metrics.json"):
        assert (trained / name).is_file(), name
    metrics = load_json(trained / "metrics.json")
    assert set(metrics["coco"]) == set(STAT_KEYS)
    assert all(0.0 <= v <= 1.0 for v in metrics["coco"].values())
    assert isinstance(metrics["params"], int) and metrics["params"] > 0 and metrics["flops"] > 0
    assert metrics["epochs"] == 2 and metrics["wall_time_s"] > 0
    # a search result's latency figures travel into metrics.json
    assert metrics["predicted_latency_ms"] == 0.7 and metrics["latency_budget_ms"] == 1000.0
    assert metrics["measured_latency_ms"] > 0 and metrics["budget_met"] is True
    ckpt = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    assert meta["arch"]["neck_channels"] == 16 and meta["num_classes"] == 6
    assert meta["class_names"][0] == "circle" and meta["label_to_cat_id"] == [1, 2, 3, 5, 8, 13]
    last = torch.load(trained / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == 2 * 8  # 16 images, batch 2
    assert all(torch.equal(ckpt["model"][k], last["ema"][k]) for k in ckpt["model"])  # model.pt = final EMA
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"lr", "loss", "loss_vfl", "loss_giou", "loss_dfl", "img_per_s", "mAP", "mAP50"} <= set(rows[0])
    assert float(rows[-1]["mAP"]) == metrics["coco"]["mAP"]
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["train"]["batch_size"] == 2 and config["train"]["weight_decay"] == 4e-5
    assert "epoch 2/2" in (trained / "train.log").read_text()


def test_eval_numbers_equal_the_retrain(work, trained):
    r = nas("eval", "tiny.yaml", "--weights", str(trained / "model.pt"), "--data", "data", "--out", "ev",
            "--workers", "0", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    evaluated = load_json(work / "ev" / "metrics.json")
    assert evaluated["coco"] == load_json(trained / "metrics.json")["coco"]
    assert evaluated["params"] == load_json(trained / "metrics.json")["params"]


def test_predict_draws_images_and_writes_json(work, trained):
    images = sorted((work / "data" / "images").glob("val_*.jpg"))[:2]
    r = nas("predict", "tiny.yaml", "--weights", str(trained / "model.pt"), *map(str, images), "--out", "pred",
            "--score-thr", "0.0", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = load_json(work / "pred" / "detections.json")
    assert [Path(rec["image"]).name for rec in doc["images"]] == [p.name for p in images]
    for rec in doc["images"]:
        assert (work / rec["output"]).is_file() and rec["detections"]  # threshold 0 keeps the top 100
        det = rec["detections"][0]
        assert {"bbox", "score", "label", "category_id", "class_name"} <= set(det)
        assert det["class_name"] in ("circle", "square", "triangle", "star", "cross", "ring")
    assert one_line_error(nas("predict", "tiny.yaml", "--weights", str(trained / "model.pt"), "missing.jpg",
                              "--out", "pred2", cwd=work)).endswith("image file not found: missing.jpg")
    assert not (work / "pred2").exists()


def test_a_model_file_is_all_eval_predict_export_and_summary_need(work, trained):
    model = str(trained / "model.pt")
    meta = torch.load(model, map_location="cpu", weights_only=True)["meta"]
    assert meta["input_size"] == 64 and meta["preprocessing"]["channel_order"] == "RGB"
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and meta["postprocess"]["iou_thr"] == 0.6
    assert meta["recipe"]["batch_size"] == 2 and meta["version"]
    r = nas("eval", model, "--data", "data", "--out", "ev-short", "--workers", "0", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_json(work / "ev-short" / "metrics.json")["coco"] == load_json(trained / "metrics.json")["coco"]
    folder = work / "to-predict"
    folder.mkdir()
    for image in sorted((work / "data" / "images").glob("val_*.jpg"))[:2]:
        shutil.copy(image, folder)
    r = nas("predict", model, str(folder), "--out", "pred-short", "--score-thr", "0.0", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(load_json(work / "pred-short" / "detections.json")["images"]) == 2
    r = nas("export", model, "--out", "short.onnx", cwd=work)
    assert r.returncode == 0 and (work / "short.onnx").is_file(), r.stderr[-3000:]
    r = nas("summary", model, "--json", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    assert info["params"] == load_json(trained / "metrics.json")["params"] and info["input_size"] == 64


def test_the_input_size_comes_from_the_checkpoint(work, trained, tmp_path):
    """A model trained at one size is evaluated at that size, whatever the ARCH given says, unless
    --input-size says otherwise."""
    ckpt = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    ckpt["meta"]["arch"]["input_size"] = ckpt["meta"]["input_size"] = 96  # as if trained at 96
    torch.save(ckpt, tmp_path / "at96.pt")
    cases = ((["--weights", str(tmp_path / "at96.pt")], 96), ([], 96), (["--input-size", "128"], 128))
    for i, (args, size) in enumerate(cases):
        first = "tiny.yaml" if args[:1] == ["--weights"] else str(tmp_path / "at96.pt")
        out = tmp_path / f"ev-{i}"
        r = nas("eval", first, *args, "--data", "data", "--out", str(out), "--workers", "0", cwd=work)
        assert r.returncode == 0, r.stderr[-3000:]
        assert load_json(out / "metrics.json")["input_size"] == size


def test_a_mismatching_or_missing_architecture_is_refused_in_one_line(work, trained, tmp_path):
    model = str(trained / "model.pt")
    line = one_line_error(nas("eval", "picodet-s", "--weights", model, "--data", "data", cwd=work))
    assert f"{model} holds another architecture than picodet-s" in line and "neck_channels 16 vs 96" in line
    line = one_line_error(nas("predict", "tiny.yaml", "some.jpg", cwd=work))
    assert "tiny.yaml is an architecture; give the checkpoint" in line
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    del ckpt["meta"]["arch"]  # as written before checkpoints recorded it
    torch.save(ckpt, tmp_path / "old.pt")
    line = one_line_error(nas("eval", str(tmp_path / "old.pt"), "--data", "data", cwd=work))
    assert "records no architecture" in line and "ARCH --weights" in line
    r = nas("eval", "tiny.yaml", "--weights", str(tmp_path / "old.pt"), "--data", "data", "--out", str(tmp_path / "ev"),
            "--workers", "0", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]


def test_odd_but_valid_data_trains_and_evaluates(tmp_path):
    make_odd_dataset(tmp_path / "odd")
    dropped = add_bad_boxes(tmp_path / "odd")
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    r = nas("retrain", "tiny.yaml", "--data", "odd", *TINY_TRAIN, "--epochs", "1", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, r.stderr  # one line for the training file, counts included
    assert "instances_train.json" in warnings[0]
    assert f"dropped {dropped - 1} boxes with zero or negative width/height" in warnings[0]
    assert "dropped 1 boxes lying entirely outside their image" in warnings[0]
    metrics = load_json(tmp_path / "run" / "metrics.json")
    assert set(metrics["coco"]) == set(STAT_KEYS)
    meta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["meta"]
    assert meta["label_to_cat_id"] == [3, 7, 42] and meta["class_names"] == ["round", "cornered", "pointy"]


# ---- bad input: exit 2, one line, nothing written -----------------------------------------
def _break(data: Path, how: str) -> tuple[str, str]:
    """Damage a dataset copy; returns (the --data argument, what the error line must contain)."""
    ann = data / "annotations"
    if how == "missing annotation file":
        (ann / "instances_val.json").unlink()
        return str(data), f"annotation file not found: {ann / 'instances_val.json'}"
    if how == "malformed annotation file":
        (ann / "instances_train.json").write_text('{"images": [')
        return str(data), f"annotation file {ann / 'instances_train.json'} is not valid JSON"
    if how == "missing image file":
        (data / "images" / "train_000003.jpg").unlink()
        return str(data), f"are missing, first: {data / 'images' / 'train_000003.jpg'}"
    if how == "non-image image file":
        (data / "images" / "val_000002.jpg").write_text("not an image")
        return str(data), f"cannot decode image file {data / 'images' / 'val_000002.jpg'}"
    if how == "empty category list":
        doc = json.loads((ann / "instances_train.json").read_text())
        doc["categories"], doc["annotations"] = [], []
        (ann / "instances_train.json").write_text(json.dumps(doc))
        return str(data), "'categories' is empty"
    if how == "neither layout":
        shutil.rmtree(ann)
        return str(data), "is in no known layout"
    raise ValueError(how)


BAD_DATA = ["missing annotation file", "malformed annotation file", "missing image file", "non-image image file",
            "empty category list", "neither layout"]


@pytest.mark.parametrize("how", BAD_DATA)
@pytest.mark.parametrize("command", ["retrain", "train-supernet"])
def test_bad_data_fails_fast_with_one_line(work, tmp_path, capsys, how, command):
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    arg, needle = _break(data, how)
    target = [str(work / "tiny.yaml")] if command == "retrain" else ["--space", "quickstart"]
    code = main([command, *target, "--data", arg, *TINY_TRAIN, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()


def test_bad_data_on_resume_leaves_the_run_untouched(work, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    _break(data, "non-image image file")
    (run / "metrics.json").unlink()  # an unfinished run, so that resume would otherwise proceed
    del before["metrics.json"]
    code = main(["retrain", str(work / "tiny.yaml"), "--data", str(data), "--resume", str(run)])
    assert code == 2 and "cannot decode image file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_run_dir_is_never_overwritten_and_resume_rules(work, trained, capsys):
    code = main(["retrain", str(work / "tiny.yaml"), "--data", str(work / "data"), "--out", str(trained)])
    err = capsys.readouterr().err
    assert code == 2 and "already exists and is not empty" in err and "--resume" in err
    code = main(["retrain", str(work / "tiny.yaml"), "--data", str(work / "data"), "--resume", str(trained)])
    assert code == 2 and "the run is complete" in capsys.readouterr().err


def test_bad_flags_and_config(work, tmp_path, capsys):
    code = main(["retrain", str(work / "tiny.yaml"), "--data", str(work / "data"), "--batch-size", "0",
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "batch-size must be a positive integer" in capsys.readouterr().err
    config = write(tmp_path / "c.yaml", "epoch: 3\n")
    code = main(["retrain", str(work / "tiny.yaml"), "--data", str(work / "data"), "-c", str(config)])
    assert code == 2 and "unknown key 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sync_bn_is_refused_where_it_cannot_work_before_anything_is_written(work, tmp_path, capsys):
    for target, needle in (([str(work / "tiny.yaml")], "--sync-bn needs CUDA GPUs"),
                           (["--space", "quickstart"], "--sync-bn is for nas retrain only")):
        command = "retrain" if len(target) == 1 else "train-supernet"
        code = main([command, *target, "--data", str(work / "data"), *TINY_TRAIN, "--sync-bn",
                     "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "r").exists()


def test_make_dataset_command(tmp_path):
    r = nas("make-dataset", "shapes", "--out", str(tmp_path / "d"), "--train", "3", "--val", "2", "--image-size", "64")
    assert r.returncode == 0, r.stderr
    assert len(load_json(tmp_path / "d" / "annotations" / "instances_train.json")["images"]) == 3
    assert len(list((tmp_path / "d" / "images").iterdir())) == 5
    assert "not empty" in one_line_error(nas("make-dataset", "shapes", "--out", str(tmp_path / "d")))
