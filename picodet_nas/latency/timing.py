"""Timing zero-argument calls the same way whatever runs inside them: the one timing method of
the latency tables, for ONNX Runtime sessions (`run_bundle`) and eager PyTorch modules alike.

Like `run_bundle.py`, this file runs on the device being profiled, so it needs only Python
3.8+ and numpy; a bundle ships it beside `run_bundle.py`.

* `warmup` untimed calls per function, then `repeats` timed calls per function, interleaved:
  each round visits every function of a group once, in a freshly shuffled order; a visit
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
* `pin_core` (one thread only): the timing thread runs on one core while it times, a given one or
  ("auto") the allowed core that was idlest over a quarter of a second (Linux `/proc/stat`),
  so the OS neither migrates the timing thread between cores mid-call nor puts it where a
  known load runs; the affinity is restored afterwards. Where the OS cannot pin
  (`os.sched_setaffinity` missing) timing runs unpinned and the results say so.
* The figure is the median; p10/p25/p75/p90 are recorded. A function whose spread
  ((p90 - p10) / median) exceeds `spread_limit` gets more rounds, interleaved again with the
  other wide ones (at most `max_remeasure` times), and its median is taken over all its samples.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import time
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

CLOCKS = ("wall", "cpu")

Progress = Optional[Callable[[str, int, int], None]]  # progress(stage, rounds done, rounds)


def _busy_ticks() -> Dict[int, "tuple[int, int]"]:
    """Per core (busy, total) jiffies since boot, from /proc/stat (empty where there is none)."""
    out: Dict[int, "tuple[int, int]"] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks = [int(x) for x in fields]
                    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
                    out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    except (OSError, ValueError, IndexError):
        return {}
    return out


def quietest_core(allowed: "set[int]", interval: float = 0.25) -> int:
    """The core of `allowed` that was busiest least over `interval` seconds; the lowest-numbered
    one where per-core load cannot be read."""
    before = _busy_ticks()
    time.sleep(interval)
    after = _busy_ticks()
    loads = {}
    for c in allowed:
        if c in before and c in after and after[c][1] > before[c][1]:
            loads[c] = (after[c][0] - before[c][0]) / (after[c][1] - before[c][1])
    return min(loads, key=lambda c: (loads[c], c)) if loads else min(allowed)


def check_pin(pin_core, threads: int, local: bool = True) -> None:
    """`pin_core` is None/"off"/False (YAML reads an unquoted `off` as False), "auto" or a core
    number (with `local`, one this process may run on; a bundle's number is checked on its
    device), with one thread."""
    if pin_core in (None, "off", False):
        return
    if threads != 1:
        raise ValueError(f"pinning to one core needs threads = 1, got {threads}")
    if pin_core == "auto":
        return
    if isinstance(pin_core, bool):  # YAML reads `on`/`yes` as True; never a core number
        raise ValueError(f"expected auto, off or a core number, got {pin_core!r}")
    try:
        core = int(pin_core)
    except (TypeError, ValueError):
        raise ValueError(f"expected auto, off or a core number, got {pin_core!r}") from None
    if local and hasattr(os, "sched_getaffinity") and core not in os.sched_getaffinity(0):
        raise ValueError(f"core {core} is not one this process may run on ({sorted(os.sched_getaffinity(0))})")


def resolve_pin(pin_core, threads: int) -> Optional[int]:
    """The core to pin to (None: no pinning) for a checked `pin_core` (see `check_pin`); where
    the OS cannot pin, None (timed unpinned, recorded as pinned_core None)."""
    check_pin(pin_core, threads)
    if pin_core in (None, "off", False) or not hasattr(os, "sched_setaffinity"):
        return None
    return quietest_core(os.sched_getaffinity(0)) if pin_core == "auto" else int(pin_core)


@contextlib.contextmanager
def pinned(core: Optional[int]):
    """Run the block's calling thread on `core` alone (None: as the OS pleases; on Linux the
    affinity is per thread, and the timing runs on this one thread); the old affinity comes back."""
    if core is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


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


def time_round_robin(fns: Dict[str, Callable[[], object]], calls: int, rng: random.Random, burst: int,
                     progress: Progress = None, stage: str = "", clock: str = "wall") -> Dict[str, List[float]]:
    """About `calls` timed calls of every function, in milliseconds.

    Round-robin: each round visits every function once, in a new random order; a visit makes
    one untimed call (it brings the model's weights and buffers back into cache) and then
    `burst` timed calls back to back. The garbage collector is off while timing: a
    collection inside a call of a few microseconds is an outlier many times its length.
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


PHASE_FIGURES = ("median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms")


def combine_phases(phases: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """One figure per model from its `measure` statistics in several independent phases (each
    with freshly loaded models): each latency figure is the geometric mean of the phases';
    `spread` is the median of theirs, `samples` and `remeasured` add up, and `phase_spread` is
    (largest - smallest) / mean of the phase medians. Run-to-run differences (a session's
    memory placement, the machine's state during a phase) move a model's median by more than
    its calls within one phase do, so only separate phases average them out. One phase: its
    statistics unchanged."""
    if len(phases) == 1:
        return phases[0]
    out: Dict[str, Dict[str, float]] = {}
    for name in phases[0]:
        per = [p[name] for p in phases]
        stats = {k: float(np.exp(np.mean(np.log([s[k] for s in per])))) for k in PHASE_FIGURES}
        medians = [s["median_ms"] for s in per]
        stats.update(spread=float(np.median([s["spread"] for s in per])),
                     samples=int(sum(s["samples"] for s in per)),
                     remeasured=int(sum(s.get("remeasured", 0) for s in per)), phases=len(per),
                     phase_spread=float((max(medians) - min(medians)) / stats["median_ms"]))
        out[name] = stats
    return out


def check_phases(phases) -> int:
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases must be an integer >= 1, got {phases!r}")
    return phases


def measure_in_phases(settings: Mapping, time_once: Callable[[Mapping, str], Dict[str, Dict[str, float]]]
                      ) -> Dict[str, Dict[str, float]]:
    """`settings["phases"]` (default 1) independent passes of `time_once(settings, label)`, each
    pass with the seed moved on by one and its stage names prefixed by `label`, combined by
    `combine_phases`. `time_once` loads its models afresh on every call."""
    phases = check_phases(settings.get("phases", 1))
    seed = int(settings.get("seed", 0))
    return combine_phases([time_once({**settings, "seed": seed + p}, f"phase {p + 1}/{phases}: " if phases > 1 else "")
                           for p in range(phases)])


def measure(fns: Dict[str, Callable[[], object]], settings: Mapping, progress: Progress = None,
            stage: str = "timing") -> Dict[str, Dict[str, float]]:
    """Time every function the same way (see the module docstring); the statistics of each.

    `settings`: warmup, repeats, burst, spread_limit, max_remeasure, clock and seed (default
    0), as a manifest's settings hold them. `warmup` untimed calls per function first
    (one-time costs: allocation, weight prepacking), then `repeats` timed calls per function.
    """
    seed = int(settings.get("seed", 0))
    repeats, burst, clock = int(settings["repeats"]), int(settings["burst"]), settings.get("clock", "wall")
    rng = random.Random(seed)
    for fn in fns.values():
        for _ in range(int(settings["warmup"])):
            fn()
    samples = time_round_robin(fns, repeats, rng, burst, progress, stage, clock)
    remeasured = {n: 0 for n in fns}
    for _ in range(int(settings["max_remeasure"])):
        wide = [n for n in fns if summarize(samples[n])["spread"] > float(settings["spread_limit"])]
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
