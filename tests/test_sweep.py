"""`nas retrain ARCH --sweep N`: the pieces (settings, search space, recipes, the table of trials
and the choice) without Ray, then four real Ray Tune trials on a tiny shapes set."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from engine_helpers import TINY_ARCH, load_json, nas, one_line_error, shapes, write
from picodet_nas.arch import resolve_arch
from picodet_nas.engine.config import TrainConfig
from picodet_nas.engine.sweep_settings import SweepSettings, final_config, parse_epochs, search_space, trial_config
from picodet_nas.engine.sweep_trials import SWEEP_COLUMNS, choose, trial_rows, write_sweep_csv
from picodet_nas.errors import UserError


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> TrainConfig:
    path = write(tmp_path_factory.mktemp("sweep_cfg") / "tiny.yaml", TINY_ARCH)
    return TrainConfig.for_arch(resolve_arch(str(path)), epochs=6, batch_size=4)


def test_settings_and_epoch_lists():
    assert SweepSettings(trials=4).epochs is None
    assert SweepSettings(trials=4, epochs=3).epochs == (3,)
    assert SweepSettings(trials=4, epochs=(4, 2, 4)).epochs == (2, 4)
    assert parse_epochs("2,4, 8") == (2, 4, 8) and parse_epochs("5") == (5,)
    for bad in (dict(trials=0), dict(trials=2, epochs=(0,)), dict(trials=2, threads_per_trial=0)):
        with pytest.raises(UserError):
            SweepSettings(**bad)
    with pytest.raises(UserError, match="comma-separated"):
        parse_epochs("two")


def test_search_space_is_log_uniform_around_the_recipe(cfg):
    space = search_space(cfg, SweepSettings(trials=4))
    lr = cfg.peak_lr(1)  # the published 0.4 at 512, scaled to a batch of 4
    assert lr == pytest.approx(0.4 * 4 / 512)
    assert (space["lr"].lower, space["lr"].upper) == pytest.approx((lr / 4, lr * 4))
    assert (space["weight_decay"].lower, space["weight_decay"].upper) == pytest.approx((1e-5, 1.6e-4))
    assert "epochs" not in space
    assert set(search_space(cfg, SweepSettings(trials=4, epochs=(2, 4)))["epochs"].categories) == {2, 4}
    given = search_space(cfg.replace(lr=0.1), SweepSettings(trials=4))
    assert (given["lr"].lower, given["lr"].upper) == pytest.approx((0.025, 0.4))


def test_trial_and_final_recipes(cfg):
    params = {"lr": 0.02, "weight_decay": 1e-4}
    trial = trial_config(cfg, params, 2)
    assert (trial.lr, trial.weight_decay, trial.epochs, trial.cosine_epochs, trial.eval_interval) == (0.02, 1e-4, 2,
                                                                                                    2, 1)
    final = final_config(cfg, params)
    assert (final.lr, final.weight_decay, final.epochs, final.cosine_epochs) == (0.02, 1e-4, 6, 6)
    assert final_config(cfg, {**params, "epochs": 4}).epochs == 4
    assert final.batch_size == trial.batch_size == cfg.batch_size  # the rest of the recipe is the run's


def _result(index: int, lr: float, maps: list[float], *, epochs: int | None = None, error: Exception | None = None):
    """What Tune's ResultGrid yields for a trial: path, config, last metrics, history, error."""
    history = pd.DataFrame({"epoch": list(range(1, len(maps) + 1)), "mAP": maps, "mAP50": [2 * m for m in maps]})
    config = {"lr": lr, "weight_decay": 4e-5, **({"epochs": epochs} if epochs else {})}
    last = history.iloc[-1].to_dict() if maps else {}
    return SimpleNamespace(path=f"/tmp/tune/trial_{index:03d}", config=config, metrics=last, error=error,
                           metrics_dataframe=history if maps else None)


def test_rows_flag_early_stops_and_errors_and_the_choice_prefers_complete_trials(cfg, tmp_path):
    settings = SweepSettings(trials=4, epochs=3)
    results = [_result(2, 0.03, [0.10, 0.30, 0.25]), _result(0, 0.01, [0.20, 0.26, 0.28]),
               _result(1, 0.02, [0.50]),  # stopped by ASHA after one epoch, with the highest mAP of all
               _result(3, 0.04, [], error=RuntimeError("training diverged: the loss is nan at step 3"))]
    rows = trial_rows(results, cfg, settings)
    assert [r["trial"] for r in rows] == ["trial_000", "trial_001", "trial_002", "trial_003"]
    assert [r["status"] for r in rows] == ["completed", "stopped", "completed", "error"]
    assert [r["stopped_early"] for r in rows] == [False, True, False, False]
    assert [r["epochs_run"] for r in rows] == [3, 1, 3, 0]
    assert rows[2]["best_mAP"] == 0.30 and rows[2]["mAP"] == 0.25
    assert "training diverged" in rows[3]["error"]
    best = choose(rows)
    assert best["trial"] == "trial_000" and best["chosen"]  # 0.28 final beats 0.25; the stopped 0.50 ran 1 epoch
    assert sum(r["chosen"] for r in rows) == 1
    write_sweep_csv(tmp_path / "sweep.csv", rows)
    table = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert tuple(table[0]) == SWEEP_COLUMNS and len(table) == 4
    assert table[0]["chosen"] == "True" and table[1]["stopped_early"] == "True" and table[3]["mAP"] == ""


def test_choice_ties_go_to_the_earlier_trial_and_all_failed_is_an_error(cfg):
    settings = SweepSettings(trials=3, epochs=(1, 2))
    rows = trial_rows([_result(1, 0.02, [0.0, 0.0], epochs=2), _result(0, 0.01, [0.0], epochs=1),
                       _result(2, 0.03, [math.nan], epochs=1)], cfg, settings)
    assert [r["epochs"] for r in rows] == [1, 2, 1]
    assert choose(rows)["trial"] == "trial_000"
    failed = trial_rows([_result(0, 0.01, [], error=RuntimeError("boom"))], cfg, settings)
    with pytest.raises(UserError, match="all 1 sweep trial.* failed; the first: boom"):
        choose(failed)


def test_sweep_flags_without_a_sweep_are_refused(tmp_path):
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    r = nas("retrain", "tiny.yaml", "--data", "nowhere", "--sweep-epochs", "2", cwd=tmp_path)
    assert "--sweep-epochs applies to a sweep; add --sweep N" in one_line_error(r)
    r = nas("retrain", "tiny.yaml", "--data", "nowhere", "--sweep", "0", cwd=tmp_path)
    assert "--sweep must be a number of trials >= 1" in one_line_error(r)


def test_sweep_of_four_trials_with_ray_tune(tmp_path):
    """Four real trials (Ray Tune, Optuna, ASHA) of 1 or 2 epochs on 16 + 8 images at 64 px,
    then the chosen trial's model kept or retrained; about 25 s on one free core."""
    shapes(tmp_path / "data", size=64)
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    r = nas("retrain", "tiny.yaml", "--data", "data", "--epochs", "2", "--batch-size", "4", "--warmup-iters", "2",
            "--workers", "0", "--device", "cpu", "--sweep", "4", "--sweep-epochs", "1,2", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "sweep.csv").open()))
    assert [row["trial"] for row in rows] == [f"trial_{i:03d}" for i in range(4)]
    assert sum(row["chosen"] == "True" for row in rows) == 1
    assert all(row["status"] in ("completed", "stopped") and row["epochs"] in ("1", "2") for row in rows)
    assert all(1 <= int(row["epochs_run"]) <= int(row["epochs"]) for row in rows)
    assert len({row["lr"] for row in rows}) == 4  # four different proposals
    for row in rows:
        trial_dir = run / "trials" / row["trial"]
        assert (trial_dir / "train.log").is_file() and (trial_dir / "metrics.csv").is_file()
        assert not (trial_dir / "last.pt").exists()  # trial checkpoints are not kept
    metrics = load_json(run / "metrics.json")
    chosen = next(row for row in rows if row["chosen"] == "True")
    assert metrics["sweep"]["trials"] == 4 and metrics["sweep"]["chosen"]["trial"] == chosen["trial"]
    assert metrics["epochs"] == int(chosen["epochs"])  # the epochs were searched: the final run uses the pick
    for name in ("model.pt", "model.onnx", "last.pt", "metrics.csv", "config.yaml"):
        assert (run / name).is_file(), name
    assert Path(run / "train.log").read_text().count("sweep chose") == 1


def test_a_sweep_whose_trials_all_fail_ends_in_one_line_naming_the_error(tmp_path):
    shapes(tmp_path / "data", size=64)
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    r = nas("retrain", "tiny.yaml", "--data", "data", "--epochs", "1", "--batch-size", "4", "--warmup-iters", "0",
            "--lr", "1e30", "--workers", "0", "--device", "cpu", "--sweep", "2", "--out", "run", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("nas retrain: error: all 2 sweep trial(s) failed; the first: training diverged")
    assert "Traceback" not in r.stderr  # Tune's reports of the failed trials are silenced
    rows = list(csv.DictReader((tmp_path / "run" / "sweep.csv").open()))
    assert [row["status"] for row in rows] == ["error", "error"] and "training diverged" in rows[0]["error"]
