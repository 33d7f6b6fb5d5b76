"""`nas retrain` under `torchrun --nproc_per_node 2` on the CPU (gloo) runs to the end, with one
set of outputs written by rank 0."""

from __future__ import annotations

import csv

import torch

from engine_helpers import TINY_ARCH, TINY_TRAIN, load_json, nas, shapes, torchrun, write


def test_retrain_under_torchrun_two_processes(tmp_path):
    shapes(tmp_path / "data", train=16, val=8)
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    r = nas("retrain", "tiny.yaml", "--data", "data", *TINY_TRAIN, "--out", "run", cwd=tmp_path,
            launcher=torchrun(2))
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "x 2 process(es)" in log and "4 steps/epoch" in log  # 16 images / 2 ranks / batch 2
    assert set(load_json(run / "metrics.json")["coco"]) >= {"mAP", "mAP50"}
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["epoch"] == 2 and last["step"] == 8
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 2
    assert r.stderr.count("epoch 2/2 loss") == 1  # only rank 0 logs
