"""`nas retrain` under `torchrun --nproc_per_node 2` on the CPU (gloo) runs to the end, with one
set of outputs written by rank 0; a NaN loss on one rank stops both ranks at once with the same
line."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_helpers import REPO, TINY_ARCH, TINY_TRAIN, load_json, nas, ranks, shapes, torchrun, write


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


def test_a_nan_loss_on_one_rank_stops_every_rank_at_once_with_one_line(tmp_path):
    """Rank 1's loss turns NaN at step 3: both ranks exit with code 2 and the same one-line error,
    within 30 s of the NaN, instead of rank 0 waiting in the gradient all-reduce."""
    shapes(tmp_path / "data", train=16, val=8)
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    stamp = tmp_path / "nan_time"
    command = [sys.executable, str(REPO / "tests" / "nan_loss_rank.py"), "1", "3", str(stamp),
               "retrain", "tiny.yaml", "--data", "data", *TINY_TRAIN, "--out", "run"]
    rank0, rank1 = ranks(2, command, cwd=tmp_path, timeout=120)
    after_nan = time.time() - float(stamp.read_text())  # both ranks have exited
    for r in (rank0, rank1):
        assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    line = rank1.stderr.strip()
    assert "\n" not in line  # rank 1 logs nothing else
    assert line.startswith("nas retrain: error: training diverged: the loss is nan on rank 1 at step 3 (lr ")
    assert rank0.stderr.strip().splitlines()[-1] == line  # rank 0: its log lines, then the same line
    assert after_nan < 30, after_nan
    assert not (tmp_path / "run" / "last.pt").exists()  # stopped inside epoch 1


def _run_check(check: str, root: Path) -> list[dict]:
    out = root / "out"
    out.mkdir()
    results = ranks(2, [sys.executable, str(REPO / "tests" / "ddp_checks.py"), check, str(root / "data"), str(out)],
                    cwd=root)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_a_sandwich_step_on_two_ranks_equals_one_process_on_the_global_batch(tmp_path):
    """Two ranks, two images each, give the weights one process gets on the four images, and the
    step all-reduces the gradients once although it trains three subnets; the last subnet is
    shallower than the largest, so some gradients come from the no_sync passes alone."""
    import ddp_checks
    from picodet_nas.engine.distributed import DistInfo

    shapes(tmp_path / "data", train=8, val=2)
    trainer = ddp_checks.sandwich_trainer(tmp_path / "data", tmp_path / "one", DistInfo(0, 1, 0, torch.device("cpu")))
    passes = trainer.plan.networks(0)
    assert len(passes) == 3 and passes[-1].arch.head_convs < passes[0].arch.head_convs
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(*ddp_checks.global_batch(tmp_path / "data"))
    expected = trainer.model.state_dict()

    for result in _run_check("sandwich", tmp_path):
        assert result["allreduces"] == 1
        for name, value in expected.items():
            torch.testing.assert_close(result["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    moved = [k for k in expected if not torch.equal(expected[k], before[k])]
    assert any(k.startswith("head.") for k in moved) and any(k.startswith("backbone.") for k in moved)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ddp_evaluate")
    shapes(root / "data", train=4, val=7)
    return root, _run_check("evaluate", root)


def test_distributed_evaluation_gives_the_numbers_of_one_process(evaluated):
    """Two ranks sharing 7 validation images (batches of 2: 4 images on rank 0, 3 on rank 1) get
    the COCO numbers of one process, exactly, on both ranks."""
    import ddp_checks
    from picodet_nas.engine.evaluate import evaluate_coco

    root, results = evaluated
    val = ddp_checks.split(root / "data", "val")
    expected = evaluate_coco(ddp_checks.realistic_detector(val.num_classes), val, ddp_checks.EVAL_SIZE, batch_size=2)
    assert any(v > 0 for v in expected.values()), expected
    for result in results:
        assert result["coco"] == expected


def test_a_crash_on_rank_0_reaches_every_rank(evaluated):
    """A bug on rank 0 inside `on_main` stops rank 0 with its own exception and the other ranks
    with one naming it, instead of leaving them waiting for rank 0's answer."""
    _, (rank0, rank1) = evaluated
    assert rank0["crash"] == "ZeroDivisionError: division by zero"
    assert rank1["crash"] == "PeerFailed: rank 0 failed: ZeroDivisionError: division by zero"
