"""Why the profiler times parts warm: the sum-of-parts bias under two timing methods.

Field-notes §3 found per-block sums 10-18% off whole networks. This experiment exports the
quickstart space at one input size (all its distinct parts, 20 calibration and 30
validation subnets) and times every model twice, interleaved round-robin both times:

* cold: one call per visit, so each call finds its weights evicted by the other models;
* warm: the shipped method (`timing.measure`): per visit one untimed call, then a burst
  of timed calls, as a deployed model runs frame after frame.

For each it reports the raw sum/whole ratio, the MAPE of the raw sum, and the MAPE, share
within ±10% and Kendall tau after the calibration (`fit_calibration`, fitted on the
calibration subnets only), on the validation subnets.

    python benchmarks/latency_bias.py [--space quickstart] [--input-size 192] [--clock wall]

Writes benchmarks/results/latency_bias.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def time_cold(fns: dict, repeats: int, clock: str, seed: int = 0) -> dict:
    """One timed call per model per round, shuffled rounds, no re-warming call."""
    from picodet_nas.latency import timing

    now = timing.clock_function(clock)
    names, rng = list(fns), random.Random(seed)
    samples = {n: [] for n in names}
    for f in fns.values():
        f()
    for _ in range(repeats):
        rng.shuffle(names)
        for n in names:
            t0 = now()
            fns[n]()
            samples[n].append((now() - t0) / 1e6)
    return {n: timing.summarize(v) for n, v in samples.items()}


def main() -> None:
    import numpy as np

    from picodet_nas.arch import Arch
    from picodet_nas.latency import run_bundle, timing
    from picodet_nas.latency.metrics import fit_calibration, prediction_errors
    from picodet_nas.latency.plan import block_part, make_plan, neck_head_part, stem_part, timing_settings
    from picodet_nas.latency.profiler import export_models
    from picodet_nas.space import load_space

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="quickstart")
    p.add_argument("--input-size", type=int, default=192)
    p.add_argument("--repeats", type=int, default=run_bundle.DEFAULT_REPEATS)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_bias.json"))
    args = p.parse_args()

    space = load_space(args.space)
    plan = make_plan(space, input_sizes=[args.input_size], calibrate=20, validate=30)
    nc = plan["num_classes"]
    result = {"space": space.name, "input_size": args.input_size, "clock": args.clock, "repeats": args.repeats,
              "loadavg_at_start": os.getloadavg(), "methods": {}}
    with tempfile.TemporaryDirectory() as d:
        export_models(plan, Path(d))
        rng = np.random.default_rng(0)
        fns = {}
        for name, spec in plan["models"].items():
            run_bundle.write_weights(Path(d), spec["weights"], rng)
            fns[name] = run_bundle.session_call(run_bundle.make_session(Path(d) / spec["file"], 1), rng)
        parts = {n: f for n, f in fns.items() if plan["models"][n]["group"] == "part"}
        wholes = {n: f for n, f in fns.items() if plan["models"][n]["group"] == "whole"}
        timings = {}
        for method in ("cold", "warm"):
            t0 = time.time()
            if method == "cold":
                timings[method] = {**time_cold(parts, args.repeats, args.clock),
                                   **time_cold(wholes, args.repeats, args.clock)}
            else:
                settings = timing_settings(repeats=args.repeats, clock=args.clock, max_remeasure=0)
                timings[method] = {**timing.measure(parts, settings), **timing.measure(wholes, settings)}
            result["methods"][method] = {"timing_s": round(time.time() - t0, 1)}

    for method, t in timings.items():
        def sums(subnets):
            out = []
            for s in subnets:
                a = Arch.from_dict(s["arch"])
                names = [stem_part(a.input_size), *(block_part(a, i) for i in range(13)), neck_head_part(a, nc)]
                out.append(sum(t[n]["median_ms"] for n in names))
            return np.array(out), np.array([t[s["model"]]["median_ms"] for s in subnets])

        cs, cm = sums(plan["calibration"])
        vs, vm = sums(plan["validation"])
        cal = fit_calibration(cs, cm)
        calibrated = prediction_errors(cal["a"] * vs + cal["b"], vm)
        result["methods"][method].update({
            "sum_over_whole_median": float(np.median(vs / vm)),
            "sum_over_whole_min": float((vs / vm).min()),
            "sum_over_whole_max": float((vs / vm).max()),
            "raw_sum_mape": prediction_errors(vs, vm)["mape"],
            "calibration": {k: cal[k] for k in ("method", "a", "b")},
            "calibrated": calibrated,
            "whole_ms_range": [float(vm.min()), float(vm.max())],
            "whole_noise_median": float(np.median([t[s["model"]]["spread"] for s in plan["validation"]])),
        })
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
