"""benchmarks/fidelity_summary.py on hand-made runs: means, shares and the paired test."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fidelity_summary  # noqa: E402


def write_run(path: Path, seed: int, alone: tuple, uniform: tuple, other: tuple | None = None,
              supernet_clip: float = 5.0) -> Path:
    archs = [{"standalone_mAP": a, "uniform_mAP": u} for a, u in zip(alone, uniform)]
    strategies = {"uniform": {}}
    if other is not None:
        strategies["correlated"] = {}
        for a, c in zip(archs, other):
            a["correlated_mAP"] = c
    path.write_text(json.dumps({"benchmark": "supernet_ranking", "seed": seed, "grad_clip": 5.0,
                                "supernet_grad_clip": supernet_clip, "archs": archs, "strategies": strategies}))
    return path


def test_means_shares_and_paired_test(tmp_path):
    runs = [write_run(tmp_path / "a.json", 1, (0.2, 0.1), (0.05, 0.04), (0.10, 0.05)),
            write_run(tmp_path / "b.json", 2, (0.1, 0.1), (0.07, 0.02), (0.08, 0.05)),
            write_run(tmp_path / "c.json", 3, (0.3, 0.1), (0.03, 0.03), (0.09, 0.02))]
    s = fidelity_summary.summarise(fidelity_summary.load_runs(runs))
    big = s["landmarks"]["largest"]
    assert s["seeds"] == [1, 2, 3]
    assert big["alone_mean"] == pytest.approx(0.2)
    assert big["strategies"]["uniform, clip 5"]["mean"] == pytest.approx(0.05)
    assert big["strategies"]["uniform, clip 5"]["share_of_alone_mean"] == pytest.approx(0.25)
    assert big["strategies"]["correlated, clip 5"]["share_by_seed"] == pytest.approx([0.5, 0.8, 0.3])
    t = big["paired_tests"]["correlated, clip 5 - uniform, clip 5"]
    # differences 0.05, 0.01, 0.06: mean 0.04, sd sqrt(0.0007), t = 0.04 / (sd / sqrt(3))
    assert t["mean_difference"] == pytest.approx(0.04)
    assert t["t"] == pytest.approx(0.04 / (0.0007 ** 0.5 / 3 ** 0.5))
    assert t["seeds_higher"] == 3 and t["df"] == 2
    small = s["landmarks"]["smallest"]["paired_tests"]["correlated, clip 5 - uniform, clip 5"]
    assert small["seeds_higher"] == 2


def test_merges_a_seed_s_supernets_of_another_clip(tmp_path):
    a = write_run(tmp_path / "a.json", 1, (0.2, 0.1), (0.05, 0.04), (0.1, 0.05))
    b = write_run(tmp_path / "b.json", 1, (0.2, 0.1), (0.03, 0.02), supernet_clip=0.0)
    (run,) = fidelity_summary.load_runs([a, b])
    assert run["scores"] == {"uniform, clip 5": [0.05, 0.04], "correlated, clip 5": [0.1, 0.05],
                             "uniform, clip 0": [0.03, 0.02]}


def test_refuses_a_seed_scored_twice_other_networks_and_foreign_json(tmp_path):
    a = write_run(tmp_path / "a.json", 1, (0.2, 0.1), (0.05, 0.04), (0.1, 0.05))
    b = write_run(tmp_path / "b.json", 1, (0.2, 0.1), (0.05, 0.04))
    with pytest.raises(ValueError, match="twice"):
        fidelity_summary.load_runs([a, b])
    c = write_run(tmp_path / "c.json", 1, (0.3, 0.1), (0.05, 0.04), supernet_clip=0.0)
    with pytest.raises(ValueError, match="other stand-alone networks"):
        fidelity_summary.load_runs([a, c])
    (tmp_path / "x.json").write_text(json.dumps({"benchmark": "ground_truth"}))
    with pytest.raises(ValueError, match="x.json"):
        fidelity_summary.load_runs([tmp_path / "x.json"])


@pytest.mark.parametrize("text", ['{"benchmark": "ground_truth"}', "not json", None])
def test_cli_refuses_a_bad_file_in_one_line_exit_2(tmp_path, capsys, text):
    bad = tmp_path / "bad.json"
    if text is not None:
        bad.write_text(text)
    with pytest.raises(SystemExit) as e:
        fidelity_summary.main([str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(str(bad))
