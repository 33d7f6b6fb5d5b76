"""Exact resume: a retrain killed with SIGKILL in the middle of an epoch and resumed ends with
bit-identical weights and the same metrics as an uninterrupted run with the same seed."""

from __future__ import annotations

import torch

from engine_helpers import (TINY_ARCH, TINY_TRAIN, assert_same_state, kill_mid_epoch, load_json, metric_rows, nas,
                            popen_nas, shapes, write)

EPOCHS = "3"


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    shapes(tmp_path / "data", train=24, val=8)
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    # Epoch 1 trains as usual; epochs 2-3 with BN frozen, so the killed epoch is the one where the
    # freeze begins and the EMA restarts: the resumed run must do both again, exactly.
    args = ["retrain", "tiny.yaml", "--data", "data", *TINY_TRAIN, "--epochs", EPOCHS,
            "--bn-freeze-epochs", "2", "--grad-clip", "5"]

    r = nas(*args, "--out", "straight", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    proc = popen_nas(*args, "--out", "killed", cwd=tmp_path)
    kill_mid_epoch(proc, tmp_path / "killed" / "train.log", "epoch 2/3 step 3/12")
    killed = tmp_path / "killed"
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 1  # killed inside epoch 2
    assert not (killed / "metrics.json").exists()

    r = nas(*args, "--out", "killed", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming killed" in (killed / "train.log").read_text()
    assert "epoch 2: BN statistics frozen for the last 2 epoch(s)" in (killed / "train.log").read_text()

    straight = tmp_path / "straight"
    for name in ("model.pt", "last.pt"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        assert_same_state(a["model"], b["model"])
        if name == "last.pt":
            assert_same_state(a["ema"], b["ema"])
            assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 36)
            assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
            for k in a["optimizer"]["state"]:
                assert torch.equal(a["optimizer"]["state"][k]["momentum_buffer"],
                                   b["optimizer"]["state"][k]["momentum_buffer"])
    assert load_json(straight / "metrics.json")["coco"] == load_json(killed / "metrics.json")["coco"]
    assert metric_rows(straight) == metric_rows(killed)
    assert len(metric_rows(killed)) == 3
