"""Experiment files (`-c FILE`) and `--print-config`: one shape and one validation for every
command and `nas quickstart`; the printed configuration reads back to itself; flags override
the file; bad files are one line naming the file and the key, exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from engine_helpers import write
from picodet_nas.cli.config import SECTIONS, catalog
from picodet_nas.cli.main import main
from picodet_nas.cli.quickstart_config import CONFIG_FILE

EXPERIMENT = """\
seed: 3
space: quickstart
data: data/shapes
threads: 1
dataset: {train: 6, val: 2, image-size: 64}
supernet: {epochs: 4, batch-size: 2, strategy: sandwich, train_sizes: [128, 160]}
profile: {input_size: 160, repeats: 7, spinning: "off"}
budget: {fraction: 0.25}
evolve: {supernet: sn.pt, latency_table: t.json, latency_budget: 2ms, population: 8, calib_images: all}
retrain: {arch: picodet-s, epochs: 20, lr: 1e-3, sweep_epochs: [5, 10]}
"""
# nas quickstart sets the data, the paths and the searched architecture itself
QUICKSTART = "seed: 3\nbudget: {fraction: 0.25}\nsupernet: {epochs: 4}\nretrain: {init: scratch}\n"

# command, its positional arguments, (section, key, the file's value), (the override's argv, its value)
COMMANDS = [
    ("train-supernet", [], ("supernet", "epochs", 4), (["--epochs", "9"], 9)),
    ("profile-device", [], ("profile", "repeats", 7), (["--repeats", "11"], 11)),
    ("evolve", [], ("evolve", "population", 8), (["--population", "12"], 12)),
    ("retrain", [], ("retrain", "epochs", 20), (["--epochs", "5"], 5)),
    ("retrain", [], ("retrain", "arch", "picodet-s"), (["picodet-m"], "picodet-m")),
    ("make-dataset", ["shapes"], ("dataset", "train", 6), (["--train", "8"], 8)),
    ("quickstart", [], ("budget", "fraction", 0.25), (["--budget-fraction", "0.5"], 0.5)),
]


def printed(capsys, *argv: str) -> str:
    assert main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


def error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command, positional, from_file, override", COMMANDS,
                         ids=[f"{c[0]}-{c[2][1]}" for c in COMMANDS])
def test_print_config_reads_back_and_flags_override_the_file(tmp_path, capsys, command, positional, from_file,
                                                              override):
    exp = write(tmp_path / "exp.yaml", QUICKSTART if command == "quickstart" else EXPERIMENT)
    flag = "--config" if command == "quickstart" else "-c"
    section, key, file_value = from_file
    base = printed(capsys, command, *positional, flag, str(exp))
    doc = yaml.safe_load(base)
    assert doc[section][key] == file_value and doc["seed"] == 3
    assert printed(capsys, command, *positional, flag, str(write(tmp_path / "printed.yaml", base))) == base

    argv, value = override
    flagged = printed(capsys, command, *positional, flag, str(exp), *argv)
    got = yaml.safe_load(flagged)
    assert got[section][key] == value
    assert {**got[section], key: file_value} == doc[section] and got["seed"] == 3  # the rest of the file stays
    assert printed(capsys, command, *positional, flag, str(write(tmp_path / "flagged.yaml", flagged))) == flagged


def test_values_are_converted_as_their_flags_convert_them(tmp_path, capsys):
    exp = write(tmp_path / "exp.yaml", EXPERIMENT)
    sn = yaml.safe_load(printed(capsys, "train-supernet", "-c", str(exp)))
    assert sn["space"] == "quickstart" and sn["data"] == "data/shapes" and "threads" not in sn
    assert sn["supernet"]["train_sizes"] == [128, 160] and sn["supernet"]["batch_size"] == 2
    assert sn["supernet"]["amp"] is None  # null: the recipe decides
    prof = yaml.safe_load(printed(capsys, "profile-device", "-c", str(exp)))["profile"]
    assert prof["input_size"] == [160] and prof["spinning"] == "off" and prof["warmup"] == 10  # a default
    evo = yaml.safe_load(printed(capsys, "evolve", "-c", str(exp)))
    assert evo["evolve"]["calib_images"] == "all" and evo["evolve"]["latency_budget"] == "2ms"
    assert evo["data"] == "data/shapes" and "space" not in evo
    re = yaml.safe_load(printed(capsys, "retrain", "-c", str(exp)))["retrain"]
    assert re["lr"] == 1e-3 and re["sweep_epochs"] == "5,10" and re["arch"] == "picodet-s"


def test_a_file_without_sections_is_the_commands_section(tmp_path, capsys):
    flat = write(tmp_path / "flat.yaml", "space: tiny.yaml\nepochs: 3\nbatch-size: 2\nseed: 1\n")
    doc = yaml.safe_load(printed(capsys, "train-supernet", "-c", str(flat)))
    assert doc["space"] == "tiny.yaml" and doc["seed"] == 1 and doc["supernet"]["epochs"] == 3
    flat = write(tmp_path / "flat2.yaml", "arch: best.yaml\ninit: supernet\nsupernet: runs/s/supernet.pt\n")
    doc = yaml.safe_load(printed(capsys, "retrain", "-c", str(flat)))["retrain"]
    assert doc["supernet"] == "runs/s/supernet.pt" and doc["init"] == "supernet"  # --supernet, not a section
    flat = write(tmp_path / "flat3.yaml", "threads: 2\n")  # profile-device's own --threads
    assert yaml.safe_load(printed(capsys, "profile-device", "-c", str(flat)))["profile"]["threads"] == 2
    assert "flat.yaml: unknown key 'epochs' (known: " in error(capsys, "evolve", "-c", str(tmp_path / "flat.yaml"))


def test_null_is_the_default_and_required_options_may_come_from_the_file(tmp_path, capsys):
    exp = write(tmp_path / "e.yaml", "evolve: {population: null, workers: null}\n")
    evo = yaml.safe_load(printed(capsys, "evolve", "-c", str(exp)))["evolve"]
    assert evo["population"] == 50 and evo["workers"] is None and evo["supernet"] is None
    line = error(capsys, "evolve", "-c", str(exp), "--latency-table", "t.json")
    assert "--supernet is required" in line and "`evolve: supernet`" in line
    assert "--data is required" in error(capsys, "retrain", "picodet-s")
    assert "ARCH is required" in error(capsys, "retrain", "--data", "d")


@pytest.mark.parametrize("text, needle", [
    ("retrain: {epoch: 3}\n", "{f}: retrain: unknown key 'epoch' (did you mean 'epochs'?)"),
    ("evolve: {populaton: 3}\n", "{f}: evolve: unknown key 'populaton' (did you mean 'population'?)"),
    ("sedd: 1\n", "{f}: unknown key 'sedd' (did you mean 'seed'?)"),
    ("retrian: {epochs: 3}\n", "{f}: unknown key 'retrian' (did you mean 'retrain'?)"),
    ("retrain: {seed: 3}\n", "{f}: retrain: seed is a shared key"),
    ("retrain: {epochs: ten}\n", "{f}: retrain: epochs must be an integer, got 'ten'"),
    ("retrain: {epochs: 2.5}\n", "{f}: retrain: epochs must be an integer, got 2.5"),
    ("retrain: {lr: fast}\n", "{f}: retrain: lr must be a number, got 'fast'"),
    ("retrain: {device: tpu}\n", "{f}: retrain: device: 'tpu' is not one of auto, cpu, cuda"),
    ("retrain: {channels_last: 1}\n", "{f}: retrain: channels_last must be true or false, got 1"),
    ("retrain: {train_sizes: [a]}\n", "{f}: retrain: train_sizes: expected sizes like 160,192,224"),
    ("retrain: {data: [1, 2]}\n", "{f}: retrain: data is a shared key"),
    ("data: [1, 2]\n", "{f}: data must be a string, got [1, 2]"),
    ("profile: {spinning: maybe}\n", "{f}: profile: spinning: 'maybe' is not one of auto, on, off"),
    ("evolve: {val_images: some}\n", "{f}: evolve: val_images: expected a number of images or 'all'"),
    ("budget: {fraction: 2}\n", "{f}: budget: fraction must be a number in [0, 1]"),
    ("retrain: [1]\n", "{f}: retrain must be a mapping of option: value"),
    ("- 1\n", "{f}: expected a mapping"),
    ("retrain: {epochs: [1\n", "{f}: not valid YAML at line"),
])
@pytest.mark.parametrize("command", ["train-supernet", "profile-device", "evolve", "retrain", "make-dataset"])
def test_every_command_checks_the_whole_file_in_one_line(tmp_path, capsys, text, needle, command):
    path = write(tmp_path / "bad.yaml", text)
    kind = ["shapes"] if command == "make-dataset" else []
    assert needle.format(f=path) in error(capsys, command, *kind, "-c", str(path), "--print-config")


def test_quickstart_reads_the_same_shape(tmp_path, capsys):
    out = printed(capsys, "quickstart")
    doc = yaml.safe_load(out)
    assert list(doc) == ["seed", "space", "threads", *SECTIONS]
    assert doc["supernet"]["epochs"] == yaml.safe_load(CONFIG_FILE.read_text())["supernet"]["epochs"]
    mine = write(tmp_path / "mine.yaml", "seed: 2\nsupernet: {epochs: 1}\nbudget: {ms: 3ms}\n")
    merged = printed(capsys, "quickstart", "--config", str(mine), "--seed", "7", "--threads", "1")
    m = yaml.safe_load(merged)
    assert m["seed"] == 7 and m["threads"] == 1 and m["supernet"]["epochs"] == 1 and m["budget"]["ms"] == 3.0
    assert m["supernet"]["batch_size"] == doc["supernet"]["batch_size"]  # the rest of the shipped section
    assert printed(capsys, "quickstart", "--config", str(write(tmp_path / "m.yaml", merged))) == merged
    # the shipped experiment file is every command's file too
    sn = yaml.safe_load(printed(capsys, "train-supernet", "-c", str(CONFIG_FILE), "--data", "d"))
    assert sn["supernet"] == {**sn["supernet"], **yaml.safe_load(CONFIG_FILE.read_text())["supernet"]}
    line = error(capsys, "quickstart", "--config", str(write(tmp_path / "o.yaml", "retrain: {out: x}\n")))
    assert "retrain: out is set by nas quickstart itself" in line


def test_the_catalog_holds_every_section_from_the_commands_own_flags():
    cat = catalog()
    assert set(cat.sections) == set(SECTIONS) and all(cat.sections.values())
    assert list(cat.shared) == ["seed", "space", "data", "threads"]
    assert {"epochs", "strategy", "search_fraction", "init"} <= set(cat.sections["supernet"])
    assert set(cat.sections["budget"]) == {"ms", "fraction"}
    for flags_only in ("resume", "config", "print_config", "help", "progress", "force", "bundle"):
        assert not any(flags_only in keys for keys in cat.sections.values()), flags_only


def test_make_dataset_runs_from_the_file(tmp_path, capsys):
    exp = write(tmp_path / "exp.yaml", "seed: 1\ndataset: {out: d, train: 3, val: 2, image_size: 64}\n")
    assert main(["make-dataset", "shapes", "-c", str(exp), "--out", str(tmp_path / "d"), "--val", "1"]) == 0
    assert "3 training and 1 validation images of 64 px" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "images").iterdir())) == 4


def test_the_readme_example_is_an_experiment_file_of_every_command(tmp_path, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Configuration files"):]
    example = write(tmp_path / "exp.yaml", re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    for command, key in (("train-supernet", "supernet"), ("profile-device", "profile"), ("evolve", "evolve"),
                         ("retrain", "retrain")):
        doc = yaml.safe_load(printed(capsys, command, "-c", str(example)))
        given = yaml.safe_load(example.read_text())[key]
        assert {k: doc[key][k] for k in given} == {k: (list(v) if isinstance(v, tuple) else v)
                                                   for k, v in given.items()}, command
