#!/usr/bin/env python3
"""Time the ONNX models of a latency bundle with ONNX Runtime: the one timing implementation.

This file runs on the device being profiled (an ARM board, a Raspberry Pi, a phone under
Termux), where picodet-nas and PyTorch cannot be installed, so it needs only Python 3.8+,
numpy and onnxruntime. `nas profile-device` imports this same file to time models on the
local machine, so a table built locally and one built from a bundle's RESULTS.json were
measured by identical code with identical settings.

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
* `warmup` untimed calls per model, then `repeats` timed calls per model, interleaved:
  each round visits every model of a group once, in a freshly shuffled order; a visit
  makes one untimed call (weights and buffers back into cache, as when a deployed model
  runs frame after frame) and then `burst` timed calls back to back. Interleaving spreads
  a burst of background load over all models instead of ruining one model's figures.
  Parts and whole networks are both timed warm like this; timing them cold (one call per
  visit) made the parts 40% slower and the wholes 20% slower than back-to-back runs, and
  the sum of parts a worse predictor (quickstart: MAPE 1.6% against 0.3% warm).
* The clock is the wall clock, or (`clock: cpu`, one thread only) the CPU time of the
  calling thread, which leaves out the time other processes held the core: on a shared
  machine wall-clock medians of whole networks jumped by 50% between runs while the thread
  CPU time stayed within 3%.
* The figure is the median; p10/p25/p75/p90 are recorded. A model whose spread
  ((p90 - p10) / median) exceeds the limit gets more rounds, interleaved again with the
  other wide models, and its median is taken over all its samples.
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
import random
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

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
DEFAULT_MAX_LOADED = 128  # sessions held at once (365 small part sessions took 1.4 GB)
CLOCKS = ("wall", "cpu")

Progress = Optional[Callable[[str, int, int], None]]


# ---------------------------------------------------------------------------- statistics
def summarize(samples_ms: List[float]) -> Dict[str, float]:
    """Median and spread of one model's samples, in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p10, p25, p50, p75, p90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {
        "median_ms": float(p50),
        "p10_ms": float(p10),
        "p25_ms": float(p25),
        "p75_ms": float(p75),
        "p90_ms": float(p90),
        "spread": float((p90 - p10) / p50) if p50 > 0 else 0.0,
        "samples": int(a.size),
    }


# ---------------------------------------------------------------------------- timing core
def clock_function(clock: str) -> Callable[[], int]:
    """Nanosecond clock: "wall" (perf_counter) or "cpu" (CPU time of the calling thread).

    The thread's CPU time leaves out the time the OS gave the core to other processes, which
    on a shared machine inflates wall-clock medians by 50% and makes them jump from run to
    run. It equals the latency only when all the work runs on the calling thread: one
    intra-op thread.
    """
    if clock == "wall":
        return time.perf_counter_ns
    if clock == "cpu":
        if time.get_clock_info("thread_time").resolution > 1e-6:
            raise ValueError("this platform's thread CPU clock is too coarse for timing; use the wall clock")
        return time.thread_time_ns
    raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")


def check_clock(clock: str, threads: int) -> None:
    clock_function(clock)
    if clock == "cpu" and threads != 1:
        raise ValueError("the cpu clock measures the calling thread only; it needs threads = 1")


def time_round_robin(fns: Dict[str, Callable[[], object]], calls: int, rng: random.Random,
                     burst: int = DEFAULT_BURST, progress: Progress = None,
                     stage: str = "", clock: str = "wall") -> Dict[str, List[float]]:
    """About `calls` timed calls of every function, in milliseconds.

    Round-robin: each round visits every function once, in a new random order; a visit makes
    one untimed call (it brings the model's weights and buffers back into cache) and then
    `burst` timed calls back to back. The garbage collector is off while timing: a
    collection inside a 50 us call is a 20x outlier.
    """
    names = list(fns)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    now = clock_function(clock)
    rounds = -(-calls // burst)
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            rng.shuffle(names)
            for name in names:
                fn = fns[name]
                fn()
                out = samples[name]
                for _ in range(burst):
                    t0 = now()
                    fn()
                    out.append((now() - t0) / 1e6)
            if progress is not None:
                progress(stage, r + 1, rounds)
    finally:
        if gc_enabled:
            gc.enable()
    return samples


def measure(fns: Dict[str, Callable[[], object]], *, warmup: int = DEFAULT_WARMUP,
            repeats: int = DEFAULT_REPEATS, burst: int = DEFAULT_BURST,
            spread_limit: float = DEFAULT_SPREAD_LIMIT, max_remeasure: int = DEFAULT_MAX_REMEASURE,
            clock: str = "wall", seed: int = 0, progress: Progress = None,
            stage: str = "timing") -> Dict[str, Dict[str, float]]:
    """Time every function the same way (see the module docstring); the statistics of each.

    `warmup` untimed calls per function first (one-time costs: allocation, weight prepacking),
    then `repeats` timed calls per function. Backend-agnostic: `fns` are zero-argument
    callables (an ONNX Runtime session run, or an eager PyTorch forward for `--backend torch`).
    """
    rng = random.Random(seed)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = time_round_robin(fns, repeats, rng, burst, progress, stage, clock)
    remeasured = {n: 0 for n in fns}
    for _ in range(max_remeasure):
        wide = [n for n in fns if summarize(samples[n])["spread"] > spread_limit]
        if not wide:
            break
        extra = time_round_robin({n: fns[n] for n in wide}, repeats, rng, burst, progress,
                                 f"{stage}: re-measuring {len(wide)} wide", clock)
        for n in wide:
            samples[n] += extra[n]
            remeasured[n] += 1
    stats = {}
    for n in fns:
        stats[n] = summarize(samples[n])
        stats[n]["remeasured"] = remeasured[n]
    return stats


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
            "allow_spinning")


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
    started = time.time()
    rng = np.random.default_rng(int(s.get("seed", 0)))
    timings: Dict[str, dict] = {}
    groups: Dict[str, List[str]] = {}
    for name, model in manifest["models"].items():
        groups.setdefault(model["group"], []).append(name)
    chunk = int(s.get("max_loaded") or DEFAULT_MAX_LOADED)
    for group in sorted(groups):  # "part" before "whole"
        names = groups[group]
        chunks = [names[i:i + chunk] for i in range(0, len(names), chunk)]
        for c, chunk_names in enumerate(chunks):
            fns = {}
            for name in chunk_names:
                model = manifest["models"][name]
                if model.get("weights"):
                    write_weights(bundle_dir, model["weights"], rng)
                session = make_session(bundle_dir / model["file"], s["threads"], s["allow_spinning"])
                fns[name] = session_call(session, rng)
            stage = f"timing {group}s" + (f" ({c + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            timings.update(measure(fns, warmup=int(s["warmup"]), repeats=int(s["repeats"]),
                                   burst=int(s["burst"]), spread_limit=float(s["spread_limit"]),
                                   max_remeasure=int(s["max_remeasure"]), clock=s["clock"],
                                   seed=int(s.get("seed", 0)), progress=progress, stage=stage))
            del fns
            gc.collect()
    return {
        "format": RESULTS_FORMAT,
        "runner_version": RUNNER_VERSION,
        "manifest": manifest,
        "settings": s,
        "backend": "onnxruntime",
        "backend_version": ort_version(),
        "execution_provider": "CPUExecutionProvider",
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
    p.add_argument("--max-loaded", type=int, help=f"ONNX Runtime sessions held at once (default: "
                                                  f"{DEFAULT_MAX_LOADED}; lower it on a board with little memory)")
    p.add_argument("--device-name", help="name of this device in the table (default: the host name)")
    args = p.parse_args(argv)
    for flag in ("threads", "repeats", "max_loaded"):
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
                             device_name=args.device_name,
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
