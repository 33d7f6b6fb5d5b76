"""Latency tables: profiling, the table format, the predictor, the bundle, the CLI.

Everything runs on a tiny space (scale 0.25, input 64/96, 4 classes) with a handful of timed
calls: these tests check the machinery and the contract, not the accuracy (the benchmarks
in benchmarks/latency_*.py measure that on a quiet machine).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from picodet_nas.arch import PRESETS, Arch
from picodet_nas.cli.main import main
from picodet_nas.errors import LatencyTableError
from picodet_nas.latency import LatencyPredictor, import_results, kendall_tau, load_table, write_bundle, write_table
from picodet_nas.latency.metrics import fit_calibration, prediction_errors
from picodet_nas.latency.plan import make_plan
from picodet_nas.latency.profiler import profile_device
from picodet_nas.space import SearchSpace, load_space

TINY = {
    "name": "tiny",
    "description": "a space small enough to profile in seconds",
    "base": {"scale": 0.25, "channel_ratio": [0.5] * 13, "neck_channels": 16, "head_convs": 1, "input_size": 64},
    "choices": {"channel_ratio": [0.5, 1.0], "kernel_size": [3, 5], "neck_channels": [16, 24],
                "head_convs": [1, 2], "input_size": [64, 96]},
}
FAST = ["--repeats", "4", "--warmup", "1", "--burst", "2", "--calibrate", "4", "--validate", "5",
        "--num-classes", "4", "--device-name", "testbox", "--phases", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a busy 2-core machine every PyTorch op with 2 intra-op threads waits for the other
    core's time slice (a tiny conv took 16 ms); these tests need no parallelism."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_space(tiny_space_file) -> SearchSpace:
    return load_space(tiny_space_file)


@pytest.fixture(scope="module")
def table_path(tiny_space_file, tmp_path_factory) -> Path:
    """A table of the tiny space at input size 64 only, made through the command line."""
    out = tmp_path_factory.mktemp("tables") / "tiny64.json"
    rc = main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST, "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def table(table_path) -> dict:
    return load_table(table_path)


@pytest.fixture(scope="module")
def predictor(table_path) -> LatencyPredictor:
    return LatencyPredictor.from_file(table_path)


def arch_file(tmp_path: Path, arch: Arch, name: str = "arch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"arch": arch.to_dict()}))
    return path


# ---------------------------------------------------------------------------- the table
def test_table_has_every_contract_key(table, table_path):
    assert {"meta", "entries", "fixed", "calibration", "range_ms", "validation"} <= set(table)
    meta = table["meta"]
    for key in ("device", "cpu_model", "os", "backend", "backend_version", "threads", "batch", "input_sizes",
                "space", "repeats", "warmup", "date", "num_classes"):
        assert key in meta, key
    assert meta["device"] == "testbox" and meta["backend"] == "onnxruntime" and meta["threads"] == 1
    assert meta["batch"] == 1 and meta["input_sizes"] == [64] and meta["num_classes"] == 4
    assert meta["space"]["name"] == "tiny" and meta["space"]["fingerprint"] == SearchSpace.from_dict(TINY).fingerprint
    for e in table["entries"]:
        assert {"block", "channel_ratio", "kernel_size", "input_size", "part", "median_ms", "p10_ms", "p90_ms"} <= set(e)
        assert e["p10_ms"] <= e["median_ms"] <= e["p90_ms"]
    assert len(table["fixed"]["stem"]) == 1 and len(table["fixed"]["neck_head"]) == 4
    val = table["validation"]
    for key in ("subnets", "mape", "within_5pct", "within_10pct", "kendall_tau", "samples"):
        assert key in val, key
    assert val["subnets"] == 5 and len(val["samples"]) == 5
    assert {"arch", "predicted_ms", "measured_ms"} <= set(val["samples"][0])
    assert 0 <= val["within_5pct"] <= val["within_10pct"] <= 1 and val["mape"] >= 0
    assert table["calibration"]["a"] > 0 and len(table["calibration"]["samples"]) == 4
    rng = table["range_ms"]
    assert 0 < rng["fastest"] <= rng["slowest"]
    assert (table_path.with_suffix(".png")).stat().st_size > 1000
    assert val["plot"] == table_path.with_suffix(".png").name


def test_every_block_choice_position_and_size_has_an_entry(tiny_space):
    plan = make_plan(tiny_space, num_classes=4, calibrate=0, validate=0)
    keys = {(e["block"], e["channel_ratio"], e["kernel_size"], e["input_size"]) for e in plan["entries"]}
    assert len(keys) == len(plan["entries"]) == 13 * 4 * 2
    assert len(plan["fixed"]["neck_head"]) == 2 * 2 * 2 and len(plan["fixed"]["stem"]) == 2


def test_blocks_with_identical_shapes_share_one_measurement(tiny_space, table):
    plan = make_plan(tiny_space, input_sizes=[64], num_classes=4, calibrate=0, validate=0)
    part = {(e["block"], e["channel_ratio"], e["kernel_size"]): e["part"] for e in plan["entries"]}
    for r in (0.5, 1.0):
        for k in (3, 5):
            assert part[(1, r, k)] == part[(2, r, k)]
            assert len({part[(i, r, k)] for i in range(4, 10)}) == 1
            assert part[(11, r, k)] == part[(12, r, k)]
            assert len({part[(i, r, k)] for i in (0, 1, 3, 4, 10, 11)}) == 6  # different shapes
    distinct = {e["part"] for e in plan["entries"]}
    assert len(distinct) == 6 * 2 * 2  # 6 shape groups x 2 ratios x 2 kernels
    timed_blocks = [n for n, m in plan["models"].items() if m["kind"] == "block"]
    assert sorted(timed_blocks) == sorted(distinct)  # each distinct block exported and timed once
    by_part = {}
    for e in table["entries"]:  # and the table repeats that one figure for every position sharing it
        assert by_part.setdefault(e["part"], e["median_ms"]) == e["median_ms"]


def test_predictor_is_sum_of_parts_plus_calibration(table, predictor, tiny_space):
    rng = random.Random(3)
    for _ in range(5):
        arch = tiny_space.sample(rng).replace(input_size=64)
        stem = next(r["median_ms"] for r in table["fixed"]["stem"] if r["input_size"] == 64)
        blocks = [next(e["median_ms"] for e in table["entries"] if e["block"] == i and e["input_size"] == 64
                       and e["channel_ratio"] == arch.channel_ratio[i] and e["kernel_size"] == arch.kernel_size[i])
                  for i in range(13)]
        nh = next(r["median_ms"] for r in table["fixed"]["neck_head"] if r["input_size"] == 64
                  and r["neck_channels"] == arch.neck_channels and r["head_convs"] == arch.head_convs)
        a, b = table["calibration"]["a"], table["calibration"]["b"]
        expected = a * (stem + sum(blocks) + nh) + b
        assert predictor.predict(arch) == pytest.approx(expected, rel=1e-12)
        assert predictor.breakdown(arch)["predicted_ms"] == pytest.approx(expected, rel=1e-12)
        assert predictor.predict_indices(predictor.encode_indices([arch]))[0] == pytest.approx(expected, rel=1e-12)
    archs = [tiny_space.sample(rng).replace(input_size=64) for _ in range(20)]
    np.testing.assert_allclose(predictor.predict_many(archs), predictor.predict_indices(predictor.encode_indices(archs)))


def test_validation_samples_use_the_calibrated_predictor(table, predictor):
    for s in table["validation"]["samples"]:
        assert predictor.predict(Arch.from_dict(s["arch"])) == pytest.approx(s["predicted_ms"], abs=1e-4)
    cal_archs = {Arch.from_dict(s["arch"]) for s in table["calibration"]["samples"]}
    val_archs = {Arch.from_dict(s["arch"]) for s in table["validation"]["samples"]}
    assert not cal_archs & val_archs  # the calibration never sees a validation subnet


def test_range_is_the_exact_extreme_of_the_space(table, predictor, tiny_space):
    fastest, slowest = table["range_ms"]["fastest"], table["range_ms"]["slowest"]
    assert predictor.predict(Arch.from_dict(table["range_ms"]["fastest_arch"])) == pytest.approx(fastest, abs=1e-4)
    assert predictor.predict(Arch.from_dict(table["range_ms"]["slowest_arch"])) == pytest.approx(slowest, abs=1e-4)
    rng = np.random.default_rng(0)
    genes = tiny_space.genes
    idx = np.stack([rng.integers(0, len(g.choices), 5000) for g in genes], axis=1)
    idx[:, [g.name for g in genes].index("input_size")] = list(genes[-1].choices).index(64)
    pred = predictor.predict_indices(idx)
    assert pred.min() >= fastest - 1e-4 and pred.max() <= slowest + 1e-4


# ---------------------------------------------------------------------------- refusals
def test_arch_outside_the_space_is_refused(predictor, tiny_space):
    base = tiny_space.base
    with pytest.raises(LatencyTableError, match="channel_ratio.3=0.75"):
        predictor.predict(base.replace(channel_ratio=(0.5,) * 3 + (0.75,) + (0.5,) * 9))
    with pytest.raises(LatencyTableError, match="scale"):
        predictor.predict(base.replace(scale=0.5))
    with pytest.raises(LatencyTableError, match="neck_channels"):
        predictor.predict(base.replace(neck_channels=32))
    with pytest.raises(LatencyTableError, match="input size 96 was not measured"):
        predictor.predict(base.replace(input_size=96))  # in the space, not in this table
    with pytest.raises(LatencyTableError):
        predictor.predict(PRESETS["picodet-s"])  # another space altogether
    with pytest.raises(LatencyTableError):
        predictor.check_space(load_space("esnet_s"))
    idx = predictor.encode_indices([base])
    idx[0, -1] = 1  # input size 96
    with pytest.raises(LatencyTableError, match="96"):
        predictor.predict_indices(idx)


def test_corrupt_and_foreign_tables_are_refused(table, table_path, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(table_path.read_text()[:500])
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        load_table(bad)
    with pytest.raises(LatencyTableError, match="cannot read"):
        load_table(tmp_path / "missing.json")
    for mutate, message in (
        (lambda t: t.pop("calibration"), "missing key 'calibration'"),
        (lambda t: t["meta"].pop("cpu_model"), "meta is missing 'cpu_model'"),
        (lambda t: t["entries"].pop(), "entries lack block"),
        (lambda t: t["entries"][0].update(median_ms=-1), "positive"),
        (lambda t: t["meta"]["space"]["definition"]["choices"].update(head_convs=[1, 2, 3]), "fingerprint"),
        (lambda t: t.update(format="something else"), "not a latency table"),
        (lambda t: t["entries"][0].update(block="first"), "non-numeric"),
    ):
        doc = json.loads(table_path.read_text())
        mutate(doc)
        path = tmp_path / "mutated.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(LatencyTableError, match=message):
            LatencyPredictor.from_file(path)


def test_summary_adds_predicted_latency(table_path, predictor, tiny_space, tmp_path, capsys):
    arch = tiny_space.sample(random.Random(1)).replace(input_size=64)
    assert main(["summary", str(arch_file(tmp_path, arch)), "--num-classes", "4", "--json",
                 "--latency-table", str(table_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["predicted_latency_ms"] == pytest.approx(predictor.predict(arch), abs=1e-3)
    assert main(["summary", str(arch_file(tmp_path, arch)), "--num-classes", "4",
                 "--latency-table", str(table_path)]) == 0
    assert "predicted latency" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["other-space", "other-size", "other-classes", "corrupt"])
def test_summary_with_a_wrong_table_exits_2_with_one_line(case, table_path, tiny_space, tmp_path, capsys):
    arch = tiny_space.base
    args = ["summary", str(arch_file(tmp_path, arch)), "--num-classes", "4", "--latency-table", str(table_path)]
    if case == "other-space":
        args[1] = "picodet-s"
    elif case == "other-size":
        args += ["--input-size", "96"]
    elif case == "other-classes":
        args[3] = "80"
    else:
        bad = tmp_path / "corrupt.json"
        bad.write_text("{not json")
        args[-1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas summary: error:") and "\n" not in err and "Traceback" not in err


def test_profile_device_refuses_bad_input_with_one_line(tiny_space_file, table_path, tmp_path, capsys):
    cases = [
        ["--space", str(tiny_space_file), "--input-size", "128", "--out", str(tmp_path / "x.json")],
        ["--space", "no_such_space"],
        ["--space", str(tiny_space_file), "--input-size", "64", "--out", str(table_path)],  # exists, no --force
        ["--space", str(tiny_space_file), "--threads", "0", "--out", str(tmp_path / "y.json")],
        ["--import", str(table_path)],  # a table is not a RESULTS.json
        ["--import", str(tmp_path / "missing.json")],
    ]
    for extra in cases:
        assert main(["profile-device", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("nas profile-device: error:") and "\n" not in err, err


# ---------------------------------------------------------------------------- metrics
def test_kendall_tau_b_on_known_inputs():
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)  # scipy's example
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one tie in x: 5 concordant, 0 discordant of 6 pairs -> 5 / sqrt(5 * 6)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_prediction_errors_and_calibration_fit():
    errs = prediction_errors([1.0, 2.19, 2.9, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert errs["mape"] == pytest.approx((0 + 0.095 + 1 / 30 + 0) / 4)
    assert errs["within_5pct"] == 0.75 and errs["within_10pct"] == 1.0 and errs["kendall_tau"] == 1.0
    s = np.linspace(2, 20, 20)
    y = 1.1 * s - 0.5
    y[3] *= 1.5  # one slow outlier must not tilt a robust fit
    cal = fit_calibration(s, y)
    assert cal["method"] == "linear" and cal["a"] == pytest.approx(1.1) and cal["b"] == pytest.approx(-0.5)
    cal = fit_calibration(s[:5] + 10, 1.2 * (s[:5] + 10) * (1 + 0.03 * np.array([1, -1, 1, -1, 0])))
    assert cal["method"] in ("ratio", "linear") and cal["a"] > 0


# ---------------------------------------------------------------------------- backends and bundles
def test_torch_backend_gives_a_table_of_the_same_form(tiny_space, table):
    t = profile_device(tiny_space, backend="torch", input_sizes=[64], repeats=2, warmup=1, burst=1,
                       calibrate=3, validate=3, num_classes=4, device_name="testbox")
    assert t["meta"]["backend"] == "torch" and t["meta"]["name"] == "testbox-torch-t1-tiny-i64"
    assert set(t) == set(table) and set(t["meta"]) == set(table["meta"])
    assert [(e["block"], e["part"]) for e in t["entries"]] == [(e["block"], e["part"]) for e in table["entries"]]


def test_without_calibration_or_validation_the_table_is_still_whole(tiny_space, tmp_path):
    t = profile_device(tiny_space, backend="torch", input_sizes=[64], repeats=2, warmup=0, burst=1,
                       calibrate=0, validate=0, num_classes=4)
    assert t["calibration"]["method"] == "identity" and (t["calibration"]["a"], t["calibration"]["b"]) == (1.0, 0.0)
    assert t["validation"]["subnets"] == 0 and t["validation"]["mape"] is None
    path, png = write_table(t, tmp_path / "t.json")
    predictor = LatencyPredictor.from_file(path)
    assert predictor.predict(tiny_space.base) == pytest.approx(predictor.breakdown(tiny_space.base)["sum_ms"])
    assert png.exists()


def _shape(doc):
    """The key structure of a JSON document (values dropped)."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_shape(v) for v in doc[:1]]
    return None


@pytest.mark.slow
def test_bundle_runs_with_only_numpy_and_onnxruntime(tiny_space, tmp_path):
    """The bundle's runner in a fresh venv (numpy + onnxruntime, no torch, no picodet-nas), and
    its RESULTS.json gives a table equal in form to a local one."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy", "onnxruntime"], capture_output=True,
                         text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"pip cannot install numpy and onnxruntime here: {pip.stderr.strip().splitlines()[-1:]}")
    check = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert check.returncode != 0  # the runner cannot lean on torch

    kwargs = dict(input_sizes=[64], repeats=3, warmup=1, burst=1, calibrate=3, validate=3, num_classes=4, seed=5)
    zpath = write_bundle(tiny_space, tmp_path / "tiny_bundle.zip", **kwargs)
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        z.extractall(tmp_path / "device")
    assert "tiny_bundle/run_bundle.py" in names and "tiny_bundle/manifest.json" in names
    assert not any(n.endswith(".weights") for n in names)  # weights are written on the device
    folder = tmp_path / "device" / "tiny_bundle"
    run = subprocess.run([str(py), "-I", "run_bundle.py", "--device-name", "board"], cwd=folder,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    remote = import_results(folder / "RESULTS.json")
    local = profile_device(tiny_space, device_name="board", **kwargs)
    assert _shape(remote) == _shape(local)
    assert remote["meta"]["name"] == local["meta"]["name"] == "board-ort-t1-tiny-i64"
    assert remote["meta"]["source"] == "bundle" and local["meta"]["source"] == "local"
    strip = ("median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms", "samples")
    for key in ("entries",):
        assert [{k: v for k, v in e.items() if k not in strip} for e in remote[key]] == \
               [{k: v for k, v in e.items() if k not in strip} for e in local[key]]
    for kind in ("stem", "neck_head"):
        assert [{k: v for k, v in e.items() if k not in strip} for e in remote["fixed"][kind]] == \
               [{k: v for k, v in e.items() if k not in strip} for e in local["fixed"][kind]]
    assert [s["arch"] for s in remote["validation"]["samples"]] == [s["arch"] for s in local["validation"]["samples"]]
    assert [s["arch"] for s in remote["calibration"]["samples"]] == [s["arch"] for s in local["calibration"]["samples"]]
    shutil.rmtree(venv)


def test_import_of_results_builds_the_table(tiny_space, tmp_path):
    """The import path without a venv: run the bundle's own runner file from the zip in-process."""
    import importlib.util

    zpath = write_bundle(tiny_space, tmp_path / "b.zip", input_sizes=[64], repeats=2, warmup=1, burst=1,
                         calibrate=3, validate=3, num_classes=4)
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp_path)
    folder = tmp_path / "b"
    spec = importlib.util.spec_from_file_location("bundled_runner", folder / "run_bundle.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    assert runner.main(["--bundle-dir", str(folder), "--device-name", "board", "--max-loaded", "7"]) == 0  # in chunks
    out = tmp_path / "t.json"
    assert main(["profile-device", "--import", str(folder / "RESULTS.json"), "--out", str(out)]) == 0
    t = load_table(out)
    assert t["meta"]["source"] == "bundle" and t["meta"]["device"] == "board" and t["validation"]["subnets"] == 3
    results = json.loads((folder / "RESULTS.json").read_text())
    del results["timings"][next(iter(results["timings"]))]
    (folder / "RESULTS.json").write_text(json.dumps(results))
    with pytest.raises(LatencyTableError, match="no timing"):
        import_results(folder / "RESULTS.json")


def test_profile_progress_is_one_line_per_stage_when_stderr_is_no_terminal(capsys):
    """`nas profile-device > log 2>&1` gets one line per finished stage, not hundreds of bar frames."""
    from picodet_nas.cli.cmd_profile_device import _ProgressBars

    bars = _ProgressBars()  # pytest's captured stderr is no terminal
    for stage, total in (("export", 3), ("time parts", 2)):
        for done in range(total + 1):
            bars(stage, done, total)
    assert capsys.readouterr().err.splitlines() == ["export: 3/3 done", "time parts: 2/2 done"]


# ---------------------------------------------------------------------------- pinning to a core
needs_affinity = pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"),
                                    reason="this OS cannot pin a process to a core")


@needs_affinity
def test_timing_pinned_to_one_core_runs_there_and_restores_the_affinity(tiny_space):
    """`--pin-core N`: the table records the core, every timing ran on it alone, and the process
    gets its old affinity back; `auto` picks one of the allowed cores."""
    import os

    from picodet_nas.latency.timing import pinned, quietest_core

    allowed = os.sched_getaffinity(0)
    core = max(allowed)
    seen = []
    with pinned(core):
        seen.append(os.sched_getaffinity(0))
    assert seen == [{core}] and os.sched_getaffinity(0) == allowed
    assert quietest_core(allowed, interval=0.05) in allowed
    t = profile_device(tiny_space, input_sizes=[64], repeats=2, warmup=0, burst=1, calibrate=0, validate=0,
                       num_classes=4, pin_core=str(core))
    assert t["meta"]["pin_core"] == str(core) and t["meta"]["pinned_core"] == core
    assert os.sched_getaffinity(0) == allowed
    auto = profile_device(tiny_space, input_sizes=[64], repeats=2, warmup=0, burst=1, calibrate=0, validate=0,
                          num_classes=4, pin_core="auto")
    assert auto["meta"]["pinned_core"] in allowed
    unpinned = profile_device(tiny_space, backend="torch", input_sizes=[64], repeats=2, warmup=0, burst=1,
                              calibrate=0, validate=0, num_classes=4)
    assert unpinned["meta"]["pin_core"] is None and unpinned["meta"]["pinned_core"] is None


def test_yaml_off_means_unpinned_and_yaml_on_is_refused():
    """An unquoted `pin_core: off` in a YAML config arrives as False and means unpinned; `on`
    arrives as True, which Python would take for core 1, and is refused."""
    from picodet_nas.latency.timing import check_pin, resolve_pin

    assert resolve_pin(yaml.safe_load("pin_core: off")["pin_core"], threads=1) is None
    with pytest.raises(ValueError, match="expected auto, off or a core number, got True"):
        check_pin(yaml.safe_load("pin_core: on")["pin_core"], threads=1)


@pytest.mark.parametrize("extra, needle", [
    (["--pin-core", "fast"], "--pin-core fast: expected auto, off or a core number"),
    (["--pin-core", "0", "--threads", "2"], "pinning to one core needs threads = 1"),
    (["--pin-core", "4096"], "core 4096 is not one this process may run on"),
])
def test_bad_pin_core_is_one_line(tiny_space_file, tmp_path, capsys, extra, needle):
    if "4096" in extra and not hasattr(__import__("os"), "sched_getaffinity"):
        pytest.skip("this OS reports no allowed cores")
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST, *extra,
                 "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and not (tmp_path / "x.json").exists()


def test_a_table_too_noisy_for_the_asked_accuracy_says_so(tiny_space_file, tmp_path, capsys):
    """Above --target-mape the table is written, marked too noisy, and one warning line says so."""
    out = tmp_path / "noisy.json"
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST,
                 "--target-mape", "0.000001", "--out", str(out)]) == 0
    val = load_table(out)["validation"]
    assert val["target_mape"] == 0.000001 and val["too_noisy"] is True
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "too noisy for the asked accuracy" in warning[0]
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST,
                 "--target-mape", "0.99", "--out", str(tmp_path / "fine.json")]) == 0
    assert load_table(tmp_path / "fine.json")["validation"]["too_noisy"] is False
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["profile-device", "--space", str(tiny_space_file), "--target-mape", "2"])
    assert e.value.code == 2 and "expected a fraction in (0, 1)" in capsys.readouterr().err


def test_phases_are_averaged_geometrically_and_one_phase_is_left_alone():
    from picodet_nas.latency.timing import PHASE_FIGURES, combine_phases

    one = {"m": {**{k: 2.0 for k in PHASE_FIGURES}, "spread": 0.1, "samples": 60, "remeasured": 1}}
    assert combine_phases([one]) is one
    other = {"m": {**{k: 8.0 for k in PHASE_FIGURES}, "spread": 0.3, "samples": 120, "remeasured": 0}}
    third = {"m": {**{k: 4.0 for k in PHASE_FIGURES}, "spread": 0.2, "samples": 60, "remeasured": 2}}
    m = combine_phases([one, other, third])["m"]
    assert all(m[k] == pytest.approx(4.0) for k in PHASE_FIGURES)  # (2 * 8 * 4) ** (1/3)
    assert m["spread"] == pytest.approx(0.2) and m["samples"] == 240 and m["remeasured"] == 3
    assert m["phases"] == 3 and m["phase_spread"] == pytest.approx((8 - 2) / 4)


def test_a_table_timed_in_phases_records_them_and_retrain_times_alike(tiny_space_file, tmp_path):
    """--phases 2: every model is timed in two passes (twice the calls), the table says so, and a
    measured latency repeats the table's measurement (`table_timing`)."""
    from picodet_nas.latency.profiler import table_timing

    out = tmp_path / "phased.json"
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST,
                 "--phases", "2", "--out", str(out)]) == 0
    table = load_table(out)
    assert table["meta"]["phases"] == 2 and table_timing(table)["phases"] == 2
    assert all(e["samples"] >= 8 for e in table["entries"])  # 2 phases x 4 repeats at least
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST,
                 "--out", str(tmp_path / "plain.json")]) == 0
    assert load_table(tmp_path / "plain.json")["meta"]["phases"] == 1


def test_bad_phases_are_one_line(tiny_space_file, tmp_path, capsys):
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST,
                 "--phases", "0", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--phases must be an integer >= 1" in err and "\n" not in err and not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------- INT8
def test_an_int8_part_is_a_quantized_model_with_its_weights_inside(tiny_space, tmp_path):
    """--precision int8: each part is exported, then statically quantized (QDQ, int8 weights per
    channel): the file holds its weights (no external data for the runner to fill) and runs."""
    import onnx
    import onnxruntime as ort

    from picodet_nas.latency.plan import export_model

    plan = make_plan(tiny_space, input_sizes=[64], num_classes=4, calibrate=0, validate=0)
    spec = dict(next(m for m in plan["models"].values() if m["kind"] == "block"))
    path = export_model(spec, 4, tmp_path, precision="int8")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "weights" not in spec
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)  # the weights, quantized
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(spec["inputs"][0]).astype(np.float32)
    assert np.isfinite(sess.run(None, {sess.get_inputs()[0].name: x})[0]).all()


def test_int8_with_the_torch_backend_is_refused(tiny_space_file, tmp_path, capsys):
    assert main(["profile-device", "--space", str(tiny_space_file), "--input-size", "64", *FAST, "--precision", "int8",
                 "--backend", "torch", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--backend torch is float only" in err and "\n" not in err
