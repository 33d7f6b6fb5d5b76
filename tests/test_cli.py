"""`nas summary` / `nas export` from the command line, including every bad input of the issue."""

import json
import subprocess
import sys

import pytest

from picodet_nas.arch import PRESETS, save_arch


def nas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "picodet_nas.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_summary_json():
    r = nas("summary", "picodet-s", "--input-size", "320", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {"params", "flops", "input_size", "arch"} <= set(info)
    assert isinstance(info["params"], int) and info["input_size"] == 320
    assert abs(info["params"] / 0.99e6 - 1) < 0.01 and abs(info["flops"] / 0.73e9 - 1) < 0.05


def test_summary_text_says_flops_convention():
    r = nas("summary", "picodet-m")
    assert r.returncode == 0 and "2 x multiply-adds" in r.stdout and "backbone" in r.stdout


def _bad(tmp_path, body):
    p = tmp_path / "a.yaml"
    p.write_text(body)
    return str(p)


@pytest.mark.parametrize("make_arg, needle", [
    (lambda t: "picodet-xs", "unknown architecture 'picodet-xs'"),
    (lambda t: _bad(t, "scale: 0.75\nchannel_ratio: [0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]\n"
                       "neck_channels: 96\nhead_convs: 2\ncolour: red\n"), "unknown key 'colour'"),
    (lambda t: _bad(t, "scale: 0.75\nchannel_ratio: [1.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]\n"
                       "neck_channels: 96\nhead_convs: 2\n"), "channel_ratio[0] must be in (0, 1]"),
    (lambda t: _bad(t, "scale: 0.75\nchannel_ratio: [0.5,0.5,0.5]\nneck_channels: 96\nhead_convs: 2\n"),
     "channel_ratio must have 13 values"),
    (lambda t: _bad(t, "arch: [unclosed\n"), "not valid YAML"),
    (lambda t: str(t / "missing.yaml"), "cannot read architecture file"),
])
@pytest.mark.parametrize("command", ["summary", "export"])
def test_bad_arch_exits_2_with_one_line(tmp_path, make_arg, needle, command):
    extra = ["--out", str(tmp_path / "x.onnx")] if command == "export" else []
    r = nas(command, make_arg(tmp_path), *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_export_command_and_best_yaml_style_file(tmp_path):
    path = tmp_path / "best.yaml"
    save_arch(PRESETS["picodet-s"].replace(input_size=128), path, extra={"scores": {"map": 0.5}})
    r = nas("export", str(path), "--no-postprocess", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 100_000
