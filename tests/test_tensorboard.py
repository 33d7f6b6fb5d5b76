"""`--tensorboard`: the scalars are the numbers metrics.csv and the search record, a resumed run's
curves continue without a fold, and without the package the command stops in one line."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from picodet_nas.errors import UserError  # noqa: E402
from picodet_nas.utils.tensorboard import TENSORBOARD_DIR, ScalarLog, require_tensorboard  # noqa: E402


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_scalars_are_the_metrics_history(tmp_path):
    from test_engine import _tiny_trainer

    trainer = _tiny_trainer(tmp_path, epochs=3, log_interval=1, tensorboard=True)
    result = trainer.fit()
    scalars = read_scalars(tmp_path / "run" / TENSORBOARD_DIR)
    rows = result.history
    for key in ("loss", "loss_vfl", "loss_giou", "loss_dfl", "lr", "img_per_s"):
        assert [s for s, _ in scalars[f"epoch/{key}"]] == [r["step"] for r in rows]
        assert [v for _, v in scalars[f"epoch/{key}"]] == pytest.approx([r[key] for r in rows], rel=1e-6)
    steps = [s for s, _ in scalars["step/loss"]]
    assert steps == list(range(1, rows[-1]["step"] + 1))  # one point per step at --log-interval 1


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    first = ScalarLog(tmp_path, purge_step=None)
    first.add("epoch", {"loss": 1.0, "note": "text", "missing": None, "nan": float("nan")}, 10)
    first.add("epoch", {"loss": 0.9}, 20)
    first.add("epoch", {"loss": 0.8}, 30)  # written after the checkpoint at step 20, then killed
    first.close()
    second = ScalarLog(tmp_path, purge_step=21)  # as Trainer.fit: the checkpoint's step + 1
    second.add("epoch", {"loss": 0.7}, 30)
    second.close()
    scalars = read_scalars(tmp_path / TENSORBOARD_DIR)
    assert list(scalars) == ["epoch/loss"]  # text, None and NaN are not scalars
    assert scalars["epoch/loss"] == [(10, 1.0), (20, pytest.approx(0.9)), (30, pytest.approx(0.7))]


def test_search_scalars_follow_the_best_so_far(tmp_path):
    from evolution.search import run_evolve
    from evolution.settings import EvolveConfig
    from toy_search import make_toy_inputs

    toy = make_toy_inputs(tmp_path / "toy")
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget="4ms",
                       data=str(toy.data), workers=0, out=str(tmp_path / "search"), population=4, parents=2,
                       mutations=2, crossovers=2, generations=3, calib_images=8, val_images=8, batch_size=8,
                       seed=0, references=False, rescore_top=0, tensorboard=True,
                       min_lead_z=0)  # the curve is the search's own best; the lead check may return another network
    result = run_evolve(cfg, progress=False)
    best = read_scalars(tmp_path / "search" / TENSORBOARD_DIR)["search/best_mAP"]
    assert [s for s, _ in best] == [0, 1, 2]
    values = [v for _, v in best]
    assert values == sorted(values) and values[-1] == pytest.approx(result.best.map, rel=1e-6)


def test_without_the_package_the_flag_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(UserError, match=r'--tensorboard needs the tensorboard package: pip install "picodet-nas'):
        require_tensorboard()
