"""`nas profile-device`: measure a space's parts, calibrate and validate, write the table.

One pipeline serves the three ways to get a table:

    make_plan  ->  export the plan's models  ->  time them  ->  build_table
                   (ONNX, weights hollowed)      run_bundle      (calibration, validation, range)

* locally: everything in one process (`profile_device`), the timing by `run_bundle.run_bundle`;
* on a remote device: `write_bundle` stops after the export and zips the models with the
  manifest and `run_bundle.py`; the device writes RESULTS.json; `import_results` builds the
  table from it with the same `build_table`;
* `--backend torch` times the same plan's modules in eager PyTorch with the same `measure`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..arch import Arch
from ..errors import LatencyTableError, SpaceError
from ..space import SearchSpace
from . import run_bundle
from .metrics import fit_calibration, prediction_errors
from .plan import build_module, export_model, make_plan, timing_settings
from .predictor import LatencyPredictor
from .table import STATISTICS, TABLE_FORMAT, TABLE_VERSION, check_table, default_table_name

BACKENDS = ("onnxruntime", "torch")
FIGURES = ("median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms")
Progress = Optional[Callable[[str, int, int], None]]


# ---------------------------------------------------------------------------- export and timing
def export_models(manifest: dict, bundle_dir: Path, progress: Progress = None) -> None:
    """Export every model of the plan into `bundle_dir` (fills each model's `weights` spec).

    PyTorch runs single-threaded here: tracing is a forward pass, and on a small shared
    machine a second thread only adds contention (a 3x slower export, measured).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names = list(manifest["models"])
        for n, name in enumerate(names):
            export_model(manifest["models"][name], manifest["num_classes"], bundle_dir,
                         seed=int(manifest["settings"].get("seed", 0)))
            if progress is not None:
                progress("exporting ONNX", n + 1, len(names))
    finally:
        torch.set_num_threads(threads)


def time_torch(manifest: dict, *, device_name: str | None = None, progress: Progress = None) -> dict:
    """The RESULTS document for `--backend torch`: the plan's modules in eager PyTorch
    (inference mode, `torch.set_num_threads(threads)`), timed by `run_bundle.measure`."""
    import torch

    s = dict(manifest["settings"])
    run_bundle.check_clock(s["clock"], int(s["threads"]))
    started = time.time()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(int(s.get("seed", 0)))
    timings: dict[str, dict] = {}
    try:
        groups: dict[str, list[str]] = {}
        for name, spec in manifest["models"].items():
            groups.setdefault(spec["group"], []).append(name)
        for group in sorted(groups):
            fns = {}
            for name in groups[group]:
                module, inputs = build_module(manifest["models"][name], manifest["num_classes"])

                def call(m=module, x=inputs):
                    with torch.inference_mode():
                        return m(*x)

                fns[name] = call
            timings.update(run_bundle.measure(
                fns, warmup=int(s["warmup"]), repeats=int(s["repeats"]), burst=int(s["burst"]),
                spread_limit=float(s["spread_limit"]), max_remeasure=int(s["max_remeasure"]),
                clock=s["clock"], seed=int(s.get("seed", 0)), progress=progress, stage=f"timing {group}s"))
    finally:
        torch.set_num_threads(old_threads)
    s["allow_spinning"] = None
    return {
        "format": run_bundle.RESULTS_FORMAT,
        "runner_version": run_bundle.RUNNER_VERSION,
        "manifest": manifest,
        "settings": s,
        "backend": "torch",
        "backend_version": torch.__version__,
        "execution_provider": None,
        "device": run_bundle.device_info(device_name),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 2),
        "timings": timings,
    }


# ---------------------------------------------------------------------------- the table
def build_table(results: dict, *, name: str | None = None, statistic: str | None = None,
                source: str = "local", results_name: str = "results") -> dict:
    """The latency table from a RESULTS document (timed here, or on a device: `source`).

    Calibration is fitted on the calibration subnets only; validation compares the calibrated
    prediction with the validation subnets, which the fit never saw.
    """
    check_results(results, results_name)
    man, timings, s, device = results["manifest"], results["timings"], results["settings"], results["device"]
    statistic = statistic or s.get("statistic") or "median"
    if statistic not in STATISTICS:
        raise LatencyTableError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
    key = f"{statistic}_ms"

    def figures(model: str) -> dict[str, Any]:
        t = timings[model]
        return {**{k: round(float(t[k]), 5) for k in FIGURES}, "samples": int(t["samples"])}

    space = SearchSpace.from_dict(man["space"]["definition"])
    name = name or default_table_name(device["device"], results["backend"], int(s["threads"]), space.name,
                                      man["input_sizes"], space.input_sizes)
    backend = results["backend"]
    meta = {
        "name": name,
        "device": device["device"],
        "cpu_model": device["cpu_model"],
        "cpu_count": device.get("cpu_count"),
        "machine": device.get("machine"),
        "os": device["os"],
        "python": device.get("python"),
        "backend": backend,
        "backend_version": results["backend_version"],
        "execution_provider": results.get("execution_provider"),
        "threads": int(s["threads"]),
        "inter_op_threads": 1 if backend == "onnxruntime" else None,
        "allow_spinning": s.get("allow_spinning"),
        "graph_optimization": "ORT_ENABLE_ALL" if backend == "onnxruntime" else None,
        "execution_mode": "sequential",
        "batch": 1,
        "input_sizes": list(man["input_sizes"]),
        "num_classes": int(man["num_classes"]),
        "space": man["space"],
        "repeats": int(s["repeats"]),
        "warmup": int(s["warmup"]),
        "burst": int(s["burst"]),
        "clock": s.get("clock", "wall"),
        "spread_limit": float(s["spread_limit"]),
        "max_remeasure": int(s["max_remeasure"]),
        "statistic": statistic,
        "timing": "interleaved round-robin over each group's models; per visit 1 untimed call, then `burst` "
                  "timed calls on `clock`; wide models re-measured; figure = `statistic` over all timed calls",
        "seed": int(s.get("seed", 0)),
        "date": results["date"],
        "timing_wall_s": results.get("wall_time_s"),
        "wall_time_s": results.get("wall_time_s"),
        "source": source,
        "runner_version": results["runner_version"],
    }
    table: dict[str, Any] = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "meta": meta,
        "entries": [{**e, **figures(e["part"])} for e in man["entries"]],
        "fixed": {k: [{**row, **figures(row["part"])} for row in man["fixed"][k]] for k in ("stem", "neck_head")},
        "calibration": {"method": "identity", "a": 1.0, "b": 0.0},
    }
    raw = LatencyPredictor(table, name, complete=False)

    def sums_and_measured(subnets: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        sums = np.array([raw.sum_of_parts(Arch.from_dict(x["arch"])) for x in subnets])
        measured = np.array([float(timings[x["model"]][key]) for x in subnets])
        return sums, measured

    cal_subnets, val_subnets = man["calibration"], man["validation"]
    cal_sums, cal_measured = sums_and_measured(cal_subnets)
    calibration = fit_calibration(cal_sums, cal_measured)
    calibration["samples"] = [{"arch": x["arch"], "sum_ms": round(float(sm), 5), "measured_ms": round(float(ms), 5)}
                              for x, sm, ms in zip(cal_subnets, cal_sums, cal_measured)]
    table["calibration"] = calibration
    a, b = calibration["a"], calibration["b"]

    val_sums, val_measured = sums_and_measured(val_subnets)
    predicted = a * val_sums + b
    spreads = [float(timings[x["model"]]["spread"]) for x in val_subnets]
    errors = prediction_errors(predicted, val_measured)
    table["validation"] = {
        "subnets": len(val_subnets),
        **errors,
        "raw_sum_mape": prediction_errors(val_sums, val_measured)["mape"],
        "noise": float(np.median(spreads)) if spreads else None,
        "samples": [{"arch": x["arch"], "predicted_ms": round(float(p), 5), "measured_ms": round(float(m), 5),
                     "sum_ms": round(float(sm), 5), "spread": round(sp, 4)}
                    for x, p, m, sm, sp in zip(val_subnets, predicted, val_measured, val_sums, spreads)],
    }
    table["range_ms"] = LatencyPredictor(table, name, complete=False).range_ms()
    order = ("format", "version", "meta", "entries", "fixed", "calibration", "range_ms", "validation")
    return check_table({k: table[k] for k in order}, name)


def check_results(results: Any, source: str = "results") -> dict:
    """A RESULTS document's structure, as a LatencyTableError of one line when it is wrong."""
    if not isinstance(results, dict) or results.get("format") != run_bundle.RESULTS_FORMAT:
        raise LatencyTableError(f"{source}: not a RESULTS.json written by run_bundle.py")
    if results.get("runner_version") != run_bundle.RUNNER_VERSION:
        raise LatencyTableError(f"{source}: written by runner version {results.get('runner_version')!r}; "
                                f"this picodet-nas reads version {run_bundle.RUNNER_VERSION} (make a new bundle)")
    for k in ("manifest", "timings", "settings", "device", "backend", "backend_version", "date"):
        if k not in results:
            raise LatencyTableError(f"{source}: missing key {k!r}")
    man = results["manifest"]
    for k in ("space", "input_sizes", "num_classes", "entries", "fixed", "calibration", "validation", "models"):
        if not isinstance(man, dict) or k not in man:
            raise LatencyTableError(f"{source}: manifest is missing {k!r}")
    try:
        referenced = ({e["part"] for e in man["entries"]} | {x["model"] for x in man["calibration"] + man["validation"]}
                      | {r["part"] for k in ("stem", "neck_head") for r in man["fixed"][k]})
    except (KeyError, TypeError):
        raise LatencyTableError(f"{source}: the manifest is malformed (entries, fixed or subnets)") from None
    missing = sorted(referenced - set(results["timings"]))
    if missing:
        raise LatencyTableError(f"{source}: no timing for {len(missing)} model(s), e.g. {missing[0]!r}")
    for m, t in results["timings"].items():
        if not isinstance(t, dict) or any(not isinstance(t.get(k), (int, float)) or not t[k] > 0 for k in FIGURES):
            raise LatencyTableError(f"{source}: timing of {m!r} is not a set of positive figures")
    try:
        space = SearchSpace.from_dict(man["space"]["definition"], source=f"{source}: manifest.space")
    except (SpaceError, TypeError, KeyError) as e:
        raise LatencyTableError(str(e)) from None
    if space.fingerprint != man["space"].get("fingerprint"):
        raise LatencyTableError(f"{source}: the manifest's space does not match its fingerprint (edited or corrupt)")
    return results


# ---------------------------------------------------------------------------- entry points
def plan_for(space: SearchSpace, *, input_sizes=None, threads: int = run_bundle.DEFAULT_THREADS,
             repeats: int = run_bundle.DEFAULT_REPEATS, warmup: int = run_bundle.DEFAULT_WARMUP,
             burst: int = run_bundle.DEFAULT_BURST, calibrate: int = 30, validate: int = 30,
             num_classes: int = 80, statistic: str = "median", clock: str = "wall",
             allow_spinning: bool | None = None, seed: int = 0) -> dict:
    """The manifest with the profiling settings folded in (argument checks included)."""
    for flag, value, low in (("threads", threads, 1), ("repeats", repeats, 1), ("warmup", warmup, 0),
                             ("burst", burst, 1), ("calibrate", calibrate, 0), ("validate", validate, 0),
                             ("num-classes", num_classes, 1)):
        if not isinstance(value, int) or value < low:
            raise LatencyTableError(f"--{flag} must be an integer >= {low}, got {value!r}")
    if statistic not in STATISTICS:
        raise LatencyTableError(f"--statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    try:
        run_bundle.check_clock(clock, threads)
    except ValueError as e:
        raise LatencyTableError(f"--clock {clock}: {e}") from None
    settings = {"threads": threads, "repeats": repeats, "warmup": warmup, "burst": burst, "clock": clock,
                "allow_spinning": allow_spinning, "statistic": statistic, "seed": seed}
    return make_plan(space, input_sizes=input_sizes, num_classes=num_classes, calibrate=calibrate,
                     validate=validate, seed=seed, settings=settings)


def profile_device(space: SearchSpace, *, backend: str = "onnxruntime", device_name: str | None = None,
                   name: str | None = None, progress: Progress = None, **plan_kwargs: Any) -> dict:
    """Profile `space` on this machine; the table (see `plan_for` for the settings)."""
    if backend not in BACKENDS:
        raise LatencyTableError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
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


BUNDLE_README = """picodet-nas latency bundle: {space} at input size(s) {sizes}, {n} models.

Needs only Python 3.8+, numpy and onnxruntime on the device:

    pip install numpy onnxruntime
    unzip {zip_name} && cd {folder}
    python run_bundle.py               # --threads N overrides the bundle's {threads} thread(s)

Copy the RESULTS.json it writes in {folder}/ back and run:

    nas profile-device --import RESULTS.json [--out TABLE.json]

Keep the device plugged in, idle and cool while it runs: the table is only as good as the timing.
"""


def write_bundle(space: SearchSpace, out: str | Path, *, progress: Progress = None, **plan_kwargs: Any) -> Path:
    """A zip holding the plan's models (graphs only), manifest.json, run_bundle.py and a README,
    under one folder named after the zip."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise LatencyTableError(f"--bundle {out}: expected a .zip path")
    manifest = plan_for(space, **plan_kwargs)
    folder = out.stem
    with tempfile.TemporaryDirectory(prefix="nas-bundle-") as d:
        root = Path(d)
        export_models(manifest, root, progress)
        (root / run_bundle.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.copyfile(run_bundle.__file__, root / "run_bundle.py")
        n = len(manifest["models"])
        (root / "README.txt").write_text(BUNDLE_README.format(
            space=space.name, sizes=", ".join(map(str, manifest["input_sizes"])), n=n, zip_name=out.name,
            folder=folder, threads=manifest["settings"]["threads"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    z.write(path, f"{folder}/{path.relative_to(root).as_posix()}")
        tmp.replace(out)
    return out


def import_results(path: str | Path, *, name: str | None = None, statistic: str | None = None) -> dict:
    """The table from a device's RESULTS.json (same construction as a local profile)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise LatencyTableError(f"{path}: cannot read results ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise LatencyTableError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return build_table(doc, name=name, statistic=statistic, source="bundle", results_name=str(path))


def measure_latency(arch: Arch, *, num_classes: int = 80, threads: int = run_bundle.DEFAULT_THREADS,
                    repeats: int = run_bundle.DEFAULT_REPEATS, warmup: int = run_bundle.DEFAULT_WARMUP,
                    burst: int = run_bundle.DEFAULT_BURST, statistic: str = "median", clock: str = "wall",
                    allow_spinning: bool | None = None, spread_limit: float | None = None,
                    max_remeasure: int | None = None, seed: int = 0) -> dict:
    """Measured whole-network latency of `arch` on this machine, timed exactly as a table's
    validation subnets are (deployed form, ONNX Runtime, batch 1); for `measured_latency_ms`.
    `table_timing(table)` gives the arguments that repeat a given table's measurement.

    Returns the timing figures plus `latency_ms` (the figure named by `statistic`).
    """
    if statistic not in STATISTICS:
        raise LatencyTableError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    spec = {"group": "whole", "kind": "whole", "file": "models/whole.onnx", "arch": arch.to_dict(),
            "inputs": [[1, 3, arch.input_size, arch.input_size]]}
    manifest = {"num_classes": num_classes, "models": {"whole": spec},
                "settings": timing_settings(threads=threads, repeats=repeats, warmup=warmup, burst=burst,
                                            clock=clock, allow_spinning=allow_spinning, spread_limit=spread_limit,
                                            max_remeasure=max_remeasure, seed=seed)}
    with tempfile.TemporaryDirectory(prefix="nas-measure-") as d:
        export_models(manifest, Path(d))
        results = run_bundle.run_bundle(d, manifest)
    stats = dict(results["timings"]["whole"])
    stats["latency_ms"] = stats[f"{statistic}_ms"]
    stats["statistic"] = statistic
    return stats


def table_timing(table: dict) -> dict[str, Any]:
    """`measure_latency` keyword arguments that time a network the way `table` was measured
    (threads, repeats, warm-up, burst, clock, spinning, re-measuring, statistic), so that a
    measured latency and the table's prediction compare like with like."""
    meta = table["meta"]
    out: dict[str, Any] = {k: meta[k] for k in ("threads", "repeats", "warmup", "statistic")}
    out["burst"] = int(meta.get("burst", run_bundle.DEFAULT_BURST))
    out["clock"] = meta.get("clock", "wall")
    out["allow_spinning"] = meta.get("allow_spinning")
    out["spread_limit"] = meta.get("spread_limit")
    out["max_remeasure"] = meta.get("max_remeasure")
    return out


def write_table(table: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the table and its validation plot (same name, .png) next to it."""
    from .plot import plot_validation
    from .table import save_table

    out = Path(out)
    png = out.with_suffix(".png")
    table["validation"]["plot"] = png.name
    save_table(table, out)
    plot_validation(table, png)
    return out, png
