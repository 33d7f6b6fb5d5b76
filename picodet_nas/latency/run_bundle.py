#!/usr/bin/env python3
"""Time the ONNX models of a latency bundle with ONNX Runtime.

This file and `timing.py` beside it run on the device being profiled (an ARM board, a
Raspberry Pi, a phone under Termux), where picodet-nas and PyTorch cannot be installed, so
they need only Python 3.8+, numpy and onnxruntime. `nas profile-device` imports these same
files to time models on the local machine, so a table built locally and one built from a
bundle's RESULTS.json were measured by identical code with identical settings.

On the device::

    unzip bundle.zip -d bundle && cd bundle
    python run_bundle.py                 # writes RESULTS.json next to this file
    python run_bundle.py --threads 4     # override the thread count the bundle was made for
    python run_bundle.py --clock cpu     # a device that cannot be kept idle (1 thread only)

then, on the machine with picodet-nas: `nas profile-device --import RESULTS.json`.

How models are timed:

* ONNX Runtime, CPU execution provider, batch 1, ORT_ENABLE_ALL, sequential execution,
  `intra_op_num_threads` = threads, `inter_op_num_threads` = 1. With more than one thread
  the pool's spinning is off by default: on small machines a spinning pool turns any
  background activity into 20-30% outliers.
* Each group of models (parts, whole networks) is timed by `timing.measure`: warm-up calls,
  then interleaved round-robin rounds of untimed + `burst` timed calls, on the wall clock
  or the calling thread's CPU time, median and spread, wide models re-measured; with
  `pin_core` (1 thread) on one core for the whole measurement. With `phases` K > 1 the whole
  measurement runs K times, each with fresh sessions, and each model's figures are the
  geometric mean of its K phases (`timing.combine_phases`).
* The bundle ships its models without weights: each model's float weights live in an
  ONNX external-data file that this runner writes with random values (scaled by fan-in)
  before loading. Weight values do not change the cost of dense kernels, and the bundle
  stays a few MB instead of hundreds.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported

import argparse
import gc
import json
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

if __package__:
    from .timing import CLOCKS, Progress, check_clock, check_phases, measure, measure_in_phases, pinned, resolve_pin
else:  # run as a script (on the device): the bundle's copy of timing.py lies beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timing import CLOCKS, Progress, check_clock, check_phases, measure, measure_in_phases, pinned, resolve_pin

RUNNER_VERSION = 1
MANIFEST = "manifest.json"
RESULTS = "RESULTS.json"
MANIFEST_FORMAT = "picodet-nas-latency-bundle"
RESULTS_FORMAT = "picodet-nas-latency-results"

# Defaults shared by `nas profile-device` and this runner.
DEFAULT_THREADS = 1
DEFAULT_WARMUP = 10
DEFAULT_REPEATS = 60  # timed calls per model
DEFAULT_BURST = 5  # timed calls per visit of the round-robin
DEFAULT_SPREAD_LIMIT = 0.15  # (p90 - p10) / median above which a model is measured again
DEFAULT_MAX_REMEASURE = 2  # extra passes over the wide models at most
DEFAULT_MAX_LOADED = 128  # sessions held at once (every session holds its own arena of memory)
DEFAULT_PHASES = 4  # independent passes over every model, each with fresh sessions, averaged: one pass
# leaves run-to-run noise of 2-3% on a busy VM, four meet MAPE <= 2% (README, "Latency tables under load")


# ---------------------------------------------------------------------------- ONNX Runtime
def ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def make_session(path: "str | Path", threads: int = DEFAULT_THREADS, allow_spinning: Optional[bool] = None):
    """An ONNX Runtime CPU session with the profiling settings (module docstring).

    `allow_spinning` None means: on with 1 thread (there is no pool to spin), off otherwise.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    spin = resolve_spinning(threads, allow_spinning)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def resolve_spinning(threads: int, allow_spinning: Optional[bool]) -> bool:
    return bool(allow_spinning) if allow_spinning is not None else int(threads) <= 1


def session_call(session, rng: np.random.Generator) -> Callable[[], object]:
    """A zero-argument call of `session` on fixed random inputs of its (static) input shapes."""
    feeds = {}
    for inp in session.get_inputs():
        if not all(isinstance(d, int) for d in inp.shape):
            raise ValueError(f"input {inp.name!r} has a dynamic shape {inp.shape}; profiling needs static shapes")
        feeds[inp.name] = rng.standard_normal(inp.shape).astype(np.float32)
    run = session.run
    return lambda: run(None, feeds)


def write_weights(model_dir: Path, spec: dict, rng: np.random.Generator) -> None:
    """Write a model's external-data weight file with random float32 values.

    `spec` = {"file": name, "bytes": size, "tensors": [[offset, count, fan_in], ...]}. Each
    tensor gets N(0, 1/fan_in) so activations stay finite through the network (fan_in 0 marks
    a bias: zeros).
    """
    buf = np.zeros(int(spec["bytes"]) // 4, dtype=np.float32)
    for offset, count, fan_in in spec["tensors"]:
        start = int(offset) // 4
        if fan_in:
            buf[start:start + int(count)] = rng.standard_normal(int(count)).astype(np.float32) / np.sqrt(fan_in)
    buf.tofile(str(model_dir / spec["file"]))


# ---------------------------------------------------------------------------- device
def cpu_model() -> str:
    """The CPU's name: /proc/cpuinfo on Linux and Android, else what platform knows."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model", "uarch"):
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key and v.strip():
                return v.strip()
    if sys.platform == "darwin":
        try:
            import subprocess

            return subprocess.check_output(["sysctl", "-n", "machdep.cpu.brand_string"], text=True).strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def device_info(device_name: Optional[str] = None) -> dict:
    return {
        "device": device_name or socket.gethostname() or "unknown",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------- the bundle
def load_manifest(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a picodet-nas latency bundle manifest")
    return manifest


SETTINGS = ("threads", "repeats", "warmup", "burst", "clock", "max_loaded", "spread_limit", "max_remeasure",
            "allow_spinning", "pin_core", "phases")


def run_bundle(bundle_dir: "str | Path", manifest: Optional[dict] = None, *, device_name: Optional[str] = None,
               progress: Progress = None, **overrides) -> dict:
    """Time every model of the bundle in `bundle_dir`; the RESULTS document (a dict).

    Settings are those the bundle was made with (its manifest), except `overrides` (any of
    SETTINGS; None leaves a setting alone). Models are timed in groups ("part": stem, blocks,
    neck+head; "whole": whole networks), interleaved within a group, at most `max_loaded`
    sessions at a time (a larger group is timed in chunks) so that a board with 1-2 GB of
    memory can run a joint space's bundle.
    """
    bundle_dir = Path(bundle_dir)
    manifest = manifest if manifest is not None else load_manifest(bundle_dir)
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r}")
    s = dict(manifest["settings"])
    s.update({k: v for k, v in overrides.items() if v is not None})
    s["allow_spinning"] = resolve_spinning(s["threads"], s.get("allow_spinning"))
    s.setdefault("clock", "wall")
    check_clock(s["clock"], int(s["threads"]))
    s["pinned_core"] = resolve_pin(s.get("pin_core"), int(s["threads"]))
    s["phases"] = check_phases(s.get("phases", 1))  # a manifest without it predates phases
    started = time.time()
    rng = np.random.default_rng(int(s.get("seed", 0)))
    with pinned(s["pinned_core"]):
        timings = measure_in_phases(s, lambda settings, label: _time_groups(bundle_dir, manifest, settings, rng,
                                                                            progress, label))
    return results_document(manifest, s, timings, started, backend="onnxruntime", backend_version=ort_version(),
                            execution_provider="CPUExecutionProvider", device_name=device_name)


def _time_groups(bundle_dir: Path, manifest: dict, s: dict, rng, progress: Progress,
                 label: str = "") -> Dict[str, dict]:
    """One pass over every model of the bundle, group by group, each model loaded afresh."""
    timings: Dict[str, dict] = {}
    chunk = int(s.get("max_loaded") or DEFAULT_MAX_LOADED)
    for group, names in model_groups(manifest).items():
        chunks = [names[i:i + chunk] for i in range(0, len(names), chunk)]
        for c, chunk_names in enumerate(chunks):
            fns = {}
            for name in chunk_names:
                model = manifest["models"][name]
                if model.get("weights"):
                    write_weights(bundle_dir, model["weights"], rng)
                session = make_session(bundle_dir / model["file"], s["threads"], s["allow_spinning"])
                fns[name] = session_call(session, rng)
            stage = f"{label}timing {group}s" + (f" ({c + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            timings.update(measure(fns, s, progress, stage))
            del fns
            gc.collect()
    return timings


def model_groups(manifest: dict) -> Dict[str, List[str]]:
    """The manifest's model names by group, in the order they are timed ("part" before "whole")."""
    groups: Dict[str, List[str]] = {}
    for name, model in manifest["models"].items():
        groups.setdefault(model["group"], []).append(name)
    return {group: groups[group] for group in sorted(groups)}


def results_document(manifest: dict, settings: dict, timings: Dict[str, dict], started: float, *, backend: str,
                     backend_version: str, execution_provider: Optional[str],
                     device_name: Optional[str] = None) -> dict:
    """The RESULTS document of `manifest`'s models timed from `started` (time.time()) until now."""
    return {
        "format": RESULTS_FORMAT,
        "runner_version": RUNNER_VERSION,
        "manifest": manifest,
        "settings": settings,
        "backend": backend,
        "backend_version": backend_version,
        "execution_provider": execution_provider,
        "device": device_info(device_name),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 2),
        "timings": timings,
    }


def _print_progress(stage: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {stage}: round {done}/{total}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description="Time the models of a picodet-nas latency bundle with ONNX Runtime "
                                            "and write RESULTS.json for `nas profile-device --import`.")
    p.add_argument("--bundle-dir", default=str(here), help="the unpacked bundle (default: this file's folder)")
    p.add_argument("--out", help=f"results file (default: {RESULTS} in the bundle folder)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the bundle's setting)")
    p.add_argument("--repeats", type=int, help="timed calls per model (default: the bundle's setting)")
    p.add_argument("--warmup", type=int, help="untimed warm-up calls per model (default: the bundle's setting)")
    p.add_argument("--clock", choices=CLOCKS, help="wall, or cpu (the calling thread's CPU time: steadier on a "
                                                   "busy device, 1 thread only) (default: the bundle's setting)")
    p.add_argument("--pin-core", help="run on one core while timing: auto (the idlest), a core number, or off "
                                      "(default: the bundle's setting; 1 thread only)")
    p.add_argument("--max-loaded", type=int, help=f"ONNX Runtime sessions held at once (default: "
                                                  f"{DEFAULT_MAX_LOADED}; lower it on a board with little memory)")
    p.add_argument("--phases", type=int, help="independent passes over every model, each with fresh sessions, "
                                              "averaged (default: the bundle's setting)")
    p.add_argument("--device-name", help="name of this device in the table (default: the host name)")
    args = p.parse_args(argv)
    for flag in ("threads", "repeats", "max_loaded", "phases"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        manifest = load_manifest(Path(args.bundle_dir))
    except (OSError, ValueError) as e:
        print(f"run_bundle: error: {e}", file=sys.stderr)
        return 2
    n = len(manifest["models"])
    print(f"timing {n} models with onnxruntime {ort_version()} on {cpu_model()}", file=sys.stderr)
    try:
        results = run_bundle(args.bundle_dir, manifest, threads=args.threads, repeats=args.repeats,
                             warmup=args.warmup, clock=args.clock, max_loaded=args.max_loaded,
                             pin_core=args.pin_core, phases=args.phases, device_name=args.device_name,
                             progress=_print_progress)
    except ValueError as e:
        print(f"run_bundle: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.bundle_dir) / RESULTS
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} ({results['wall_time_s']:.0f} s); copy it back and run "
          f"`nas profile-device --import {out.name}`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
