"""`nas profile-device`: measure a space's parts, calibrate and validate, write the table.

One pipeline serves the three ways to get a table:

    make_plan  ->  export the plan's models  ->  time them  ->  build_table
                   (ONNX, weights hollowed)      run_bundle      (calibration, validation, range)

* locally: everything in one process (`profile_device`), the timing by `run_bundle.run_bundle`;
* on a remote device: `bundle.write_bundle` stops after the export and zips the models with
  the manifest and the runner; the device writes RESULTS.json; `bundle.import_results` builds
  the table from it with the same `results.build_table`;
* `--backend torch` times the same plan's modules in eager PyTorch with the same `timing.measure`.

`measure_latency` times one whole network the same way, as a table's validation subnets are.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..errors import LatencyTableError
from ..space import SearchSpace
from . import run_bundle
from .plan import build_module, export_model, make_plan, timing_settings
from .results import build_table
from .int8 import check_precision
from .table import check_statistic
from .timing import Progress, check_clock, check_phases, check_pin, measure, measure_in_phases, pinned, resolve_pin

BACKENDS = ("onnxruntime", "torch")


# ---------------------------------------------------------------------------- export and timing
@contextlib.contextmanager
def torch_threads(threads: int):
    """PyTorch's intra-op thread count set to `threads` inside the block, then given back."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def export_models(manifest: dict, bundle_dir: Path, progress: Progress = None) -> None:
    """Export every model of the plan into `bundle_dir` (fills each model's `weights` spec).

    PyTorch runs single-threaded here: tracing is a forward pass, and on a small shared
    machine a second thread only adds contention.
    """
    with torch_threads(1):
        names = list(manifest["models"])
        for n, name in enumerate(names):
            export_model(manifest["models"][name], manifest["num_classes"], bundle_dir,
                         seed=int(manifest["settings"].get("seed", 0)),
                         precision=manifest["settings"].get("precision", "fp32"))
            if progress is not None:
                progress("exporting ONNX", n + 1, len(names))


def time_torch(manifest: dict, *, device_name: str | None = None, progress: Progress = None) -> dict:
    """The RESULTS document for `--backend torch`: the plan's modules in eager PyTorch
    (inference mode, `torch.set_num_threads(threads)`), timed by `timing.measure`."""
    import torch

    s = dict(manifest["settings"])
    check_clock(s["clock"], int(s["threads"]))
    s["pinned_core"] = resolve_pin(s.get("pin_core"), int(s["threads"]))
    s["phases"] = check_phases(s.get("phases", run_bundle.DEFAULT_PHASES))
    started = time.time()

    def time_once(settings, label: str) -> dict[str, dict]:
        timings: dict[str, dict] = {}
        for group, names in run_bundle.model_groups(manifest).items():
            fns = {}
            for name in names:
                module, inputs = build_module(manifest["models"][name], manifest["num_classes"])

                def call(m=module, x=inputs):
                    with torch.inference_mode():
                        return m(*x)

                fns[name] = call
            timings.update(measure(fns, settings, progress, f"{label}timing {group}s"))
        return timings

    with torch_threads(s["threads"]), pinned(s["pinned_core"]):
        torch.manual_seed(int(s.get("seed", 0)))
        timings = measure_in_phases(s, time_once)
    s["allow_spinning"] = None
    return run_bundle.results_document(manifest, s, timings, started, backend="torch",
                                       backend_version=torch.__version__, execution_provider=None,
                                       device_name=device_name)


# ---------------------------------------------------------------------------- entry points
def plan_for(space: SearchSpace, *, input_sizes=None, threads: int = run_bundle.DEFAULT_THREADS,
             repeats: int = run_bundle.DEFAULT_REPEATS, warmup: int = run_bundle.DEFAULT_WARMUP,
             burst: int = run_bundle.DEFAULT_BURST, calibrate: int = 30, validate: int = 30,
             num_classes: int = 80, statistic: str = "median", clock: str = "wall",
             allow_spinning: bool | None = None, pin_core: int | str | None = None, precision: str = "fp32",
             phases: int = run_bundle.DEFAULT_PHASES, seed: int = 0) -> dict:
    """The manifest with the profiling settings folded in (argument checks included)."""
    for flag, value, low in (("threads", threads, 1), ("repeats", repeats, 1), ("warmup", warmup, 0),
                             ("phases", phases, 1),
                             ("burst", burst, 1), ("calibrate", calibrate, 0), ("validate", validate, 0),
                             ("num-classes", num_classes, 1)):
        if not isinstance(value, int) or value < low:
            raise LatencyTableError(f"--{flag} must be an integer >= {low}, got {value!r}")
    check_statistic(statistic, "--statistic")
    check_precision(precision)
    try:
        check_clock(clock, threads)
    except ValueError as e:
        raise LatencyTableError(f"--clock {clock}: {e}") from None
    try:
        check_pin(pin_core, threads, local=False)  # a core of this machine is checked when timing starts here
    except ValueError as e:
        raise LatencyTableError(f"--pin-core {pin_core}: {e}") from None
    settings = {"threads": threads, "repeats": repeats, "warmup": warmup, "burst": burst, "clock": clock,
                "allow_spinning": allow_spinning, "pin_core": pin_core, "phases": phases, "statistic": statistic,
                "precision": precision, "seed": seed}
    return make_plan(space, input_sizes=input_sizes, num_classes=num_classes, calibrate=calibrate,
                     validate=validate, seed=seed, settings=settings)


def profile_device(space: SearchSpace, *, backend: str = "onnxruntime", device_name: str | None = None,
                   name: str | None = None, progress: Progress = None, **plan_kwargs: Any) -> dict:
    """Profile `space` on this machine; the table (see `plan_for` for the settings)."""
    if backend not in BACKENDS:
        raise LatencyTableError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" and plan_kwargs.get("precision", "fp32") != "fp32":
        raise LatencyTableError("--precision int8 times ONNX Runtime's quantized models; --backend torch is float only")
    started = time.time()
    manifest = plan_for(space, **plan_kwargs)
    if backend == "torch":
        results = time_torch(manifest, device_name=device_name, progress=progress)
    else:
        with tempfile.TemporaryDirectory(prefix="nas-profile-") as d:
            export_models(manifest, Path(d), progress)
            results = run_bundle.run_bundle(d, manifest, device_name=device_name, progress=progress)
    table = build_table(results, name=name, source="local")
    table["meta"]["wall_time_s"] = round(time.time() - started, 1)  # export included
    return table


def measure_latency(arch: Arch, *, num_classes: int = 80, threads: int = run_bundle.DEFAULT_THREADS,
                    repeats: int = run_bundle.DEFAULT_REPEATS, warmup: int = run_bundle.DEFAULT_WARMUP,
                    burst: int = run_bundle.DEFAULT_BURST, statistic: str = "median", clock: str = "wall",
                    allow_spinning: bool | None = None, spread_limit: float | None = None,
                    max_remeasure: int | None = None, pin_core: int | str | None = None, precision: str = "fp32",
                    phases: int | None = None, seed: int = 0, anchors: list[dict] | None = None,
                    anchor_classes: int | None = None) -> dict:
    """Measured whole-network latency of `arch` on this machine, timed exactly as a table's
    validation subnets are (deployed form, ONNX Runtime, batch 1, quantized for `precision`
    int8); for `measured_latency_ms`. `table_timing(table)` gives the arguments that repeat a
    given table's measurement.

    `anchors` (`anchors.table_anchors`): subnets of the table timed in the same interleaved
    rounds (with `anchor_classes` classes, default `num_classes`); the answer then also holds
    each anchor's `now_ms` and `machine_speed` (see `anchors`).

    Returns the timing figures plus `latency_ms` (the figure named by `statistic`).
    """
    check_statistic(statistic)
    check_precision(precision)
    spec = {"group": "whole", "kind": "whole", "file": "models/whole.onnx", "arch": arch.to_dict(),
            "inputs": [[1, 3, arch.input_size, arch.input_size]]}
    manifest = {"num_classes": num_classes, "models": {"whole": spec},
                "settings": timing_settings(seed=seed, precision=precision)}
    with tempfile.TemporaryDirectory(prefix="nas-measure-") as d:
        export_models(manifest, Path(d))
        return _time_whole(d, manifest, statistic=statistic, anchors=anchors,
                           anchor_classes=anchor_classes or num_classes, threads=threads, repeats=repeats,
                           warmup=warmup, burst=burst, clock=clock, allow_spinning=allow_spinning,
                           spread_limit=spread_limit, max_remeasure=max_remeasure, pin_core=pin_core, phases=phases)


def measure_onnx(path: str | Path, *, statistic: str = "median", seed: int = 0, precision: str = "fp32",
                 anchors: list[dict] | None = None, anchor_classes: int = 80, **timing: Any) -> dict:
    """Measured latency of an ONNX file with static inputs (e.g. `model.int8.onnx`), timed as
    `measure_latency` times an exported network (`timing`: its keyword arguments); `anchors` are
    exported at `precision` with `anchor_classes` classes, as their table's subnets were."""
    import shutil

    check_statistic(statistic)
    check_precision(precision)
    spec = {"group": "whole", "kind": "whole", "file": "models/whole.onnx"}
    manifest = {"num_classes": 0, "models": {"whole": spec}, "settings": timing_settings(seed=seed, precision=precision)}
    with tempfile.TemporaryDirectory(prefix="nas-measure-") as d:
        (Path(d) / "models").mkdir()
        shutil.copyfile(path, Path(d) / spec["file"])
        return _time_whole(d, manifest, statistic=statistic, anchors=anchors, anchor_classes=anchor_classes, **timing)


def _time_whole(bundle_dir: str, manifest: dict, *, statistic: str, anchors: list[dict] | None = None,
                anchor_classes: int = 80, **timing: Any) -> dict:
    """Time the manifest's `whole` model, with `anchors` exported beside it (`anchor0`...) and
    timed in the same rounds of the same group."""
    from .anchors import anchored

    anchors = list(anchors or [])
    for i, a in enumerate(anchors):
        arch = Arch.from_dict(a["arch"])
        spec = {"group": "whole", "kind": "whole", "file": f"models/anchor{i}.onnx", "arch": arch.to_dict(),
                "inputs": [[1, 3, arch.input_size, arch.input_size]]}
        with torch_threads(1):
            export_model(spec, anchor_classes, Path(bundle_dir), seed=int(manifest["settings"].get("seed", 0)) + 1 + i,
                         precision=manifest["settings"].get("precision", "fp32"))
        manifest["models"][f"anchor{i}"] = spec
    overrides = {k: v for k, v in timing.items() if k in run_bundle.SETTINGS}
    results = run_bundle.run_bundle(bundle_dir, manifest, **overrides)
    stats = dict(results["timings"]["whole"])
    stats["latency_ms"] = stats[f"{statistic}_ms"]
    stats["statistic"] = statistic
    if anchors:
        stats["anchors"] = [{**a, "now_ms": round(results["timings"][f"anchor{i}"][f"{statistic}_ms"], 5)}
                            for i, a in enumerate(anchors)]
        stats.update(anchored(stats["latency_ms"], None, stats["anchors"]))
    return stats


def table_timing(table: dict) -> dict[str, Any]:
    """`measure_latency` keyword arguments that time a network the way `table` was measured
    (threads, repeats, warm-up, burst, clock, spinning, re-measuring, phases, statistic), so that a
    measured latency and the table's prediction compare like with like."""
    meta = table["meta"]
    out: dict[str, Any] = {k: meta[k] for k in ("threads", "repeats", "warmup", "statistic")}
    out["burst"] = int(meta.get("burst", run_bundle.DEFAULT_BURST))
    out["clock"] = meta.get("clock", "wall")
    out["allow_spinning"] = meta.get("allow_spinning")
    out["spread_limit"] = meta.get("spread_limit")
    out["max_remeasure"] = meta.get("max_remeasure")
    out["phases"] = int(meta.get("phases", 1))  # a table without it was timed in one pass
    # a core number names a core of the profiling machine; here the idlest core stands for it
    out["pin_core"] = "auto" if meta.get("pin_core") not in (None, "off", "auto") else meta.get("pin_core")
    out["precision"] = meta.get("precision", "fp32")
    return out


