"""Shared pieces of the engine and command tests: tiny architectures and spaces, tiny datasets
(clean, odd-but-valid), and running `nas` in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from picodet_nas.data import make_shapes_dataset
from picodet_nas.engine.run_record import TIME_COLUMNS

REPO = Path(__file__).resolve().parent.parent

# A PicoDet small enough to train a few steps in well under a second on one core.
TINY_ARCH = """\
scale: 0.5
channel_ratio: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
neck_channels: 16
head_convs: 1
input_size: 64
"""

# A search space of the same size, with every searchable dimension.
TINY_SPACE = """\
name: tiny
description: "tests: every dimension, tiny networks"
base:
  scale: 0.5
  channel_ratio: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
  neck_channels: 16
  head_convs: 1
  input_size: 64
choices:
  channel_ratio: [0.5, 1.0]
  kernel_size: [3, 5]
  neck_channels: [16, 24]
  head_convs: [1, 2]
  input_size: [64, 96]
"""

# Settings of a tiny run: the published defaults are never shrunk, the tests pass these.
TINY_TRAIN = ["--epochs", "2", "--batch-size", "2", "--lr", "0.02", "--warmup-iters", "4", "--eval-interval", "1",
              "--workers", "0", "--log-interval", "1", "--device", "cpu"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def shapes(root: Path, train: int = 16, val: int = 8, size: int = 96, seed: int = 0) -> Path:
    return make_shapes_dataset(root, train=train, val=val, image_size=size, seed=seed)


def nas(*args: str, cwd: Path | str | None = None, timeout: float = 300, check_output: bool = False,
        launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`nas ARGS` in a fresh process (one intra-op thread: on a shared 2-core machine two threads
    contend and run several times slower)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"}
    cmd = (launcher or [sys.executable]) + ["-m", "picodet_nas.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def popen_nas(*args: str, cwd: Path | str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"}
    return subprocess.Popen([sys.executable, "-m", "picodet_nas.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def ranks(nproc: int, command: list[str], *, cwd: Path | str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """`command` as the `nproc` processes of one DDP run, started directly with the environment
    torchrun gives its workers, so that each rank's exit code and stderr can be checked alone.
    A rank still running after `timeout` seconds is killed (its return code is then negative)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    procs = [subprocess.Popen(command, cwd=cwd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(nproc)]
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def make_odd_dataset(root: Path) -> Path:
    """Valid but awkward COCO data: category ids 3, 7, 42 (with gaps), an image without boxes, a
    crowd box, a grayscale PNG, an RGBA PNG and a box touching the image border."""
    shapes(root, train=16, val=8, size=96, seed=3)
    ann_dir = root / "annotations"
    for split in ("train", "val"):
        path = ann_dir / f"instances_{split}.json"
        data = json.loads(path.read_text())
        new_ids = {1: 3, 2: 7, 3: 42, 5: 42, 8: 7, 13: 3}
        data["categories"] = [{"id": 3, "name": "round"}, {"id": 7, "name": "cornered"}, {"id": 42, "name": "pointy"}]
        for ann in data["annotations"]:
            ann["category_id"] = new_ids[ann["category_id"]]
        images = data["images"]
        # no boxes on the first image
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != images[0]["id"]]
        # grayscale and RGBA PNGs
        for img, mode in ((images[1], "L"), (images[2], "RGBA")):
            src = root / "images" / img["file_name"]
            png = src.with_suffix(".png")
            Image.open(src).convert(mode).save(png)
            src.unlink()
            img["file_name"] = png.name
        next_id = max(a["id"] for a in data["annotations"]) + 1
        w, h = images[3]["width"], images[3]["height"]
        data["annotations"] += [
            {"id": next_id, "image_id": images[3]["id"], "category_id": 7, "bbox": [0, 0, 30, 25],
             "area": 750, "iscrowd": 0},  # touches the top-left corner
            {"id": next_id + 1, "image_id": images[3]["id"], "category_id": 42, "bbox": [w - 20, h - 30, 20, 30],
             "area": 600, "iscrowd": 0},  # touches the bottom-right corner
            {"id": next_id + 2, "image_id": images[4]["id"], "category_id": 3, "bbox": [10, 10, 40, 40],
             "area": 1600, "iscrowd": 1},  # crowd
        ]
        path.write_text(json.dumps(data))
    return root


def add_bad_boxes(root: Path) -> int:
    """Boxes with zero/negative size and one outside its image, in the training file; returns how many."""
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    image = data["images"][5]
    next_id = max(a["id"] for a in data["annotations"]) + 1
    cat = data["categories"][0]["id"]
    bad = [[5, 5, 0, 10], [5, 5, 10, -3], [image["width"] + 10, 5, 10, 10]]
    data["annotations"] += [{"id": next_id + i, "image_id": image["id"], "category_id": cat, "bbox": b,
                             "area": 1.0, "iscrowd": 0} for i, b in enumerate(bad)]
    path.write_text(json.dumps(data))
    return len(bad)


# ---- exact resume --------------------------------------------------------------------------
def kill_mid_epoch(proc, log: Path, marker: str, timeout: float = 240) -> None:
    """SIGKILL `proc` as soon as `marker` appears in the run's log (a step line of epoch 2)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and marker in log.read_text():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log.is_file() else "(no log)"
            raise AssertionError(f"run ended (exit {proc.returncode}) before it could be killed: {tail}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out waiting for the run to reach the kill point")


def metric_rows(run: Path) -> list[dict]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in rows]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
