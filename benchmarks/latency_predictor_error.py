"""Latency prediction error and profiling time (design.md, "Figures that matter").

Builds the latency table of each case with `nas profile-device` defaults (ONNX Runtime,
1 thread) on this machine and records the validation figures (MAPE, share within ±5% and
±10%, Kendall tau over 30 random subnets never seen by the calibration), the wall time of
the whole build, the measurement noise, and whether the acceptance targets hold:

    esnet_s @ 320:              >= 90% within ±10%, MAPE <= 5%  (goal 95% / 3%), build <= 10 min
    picodet_s_joint, all sizes: >= 90% within ±10%, Kendall tau >= 0.9,           build <= 20 min

Run it on a quiet machine (nothing else running): the figures are only as good as the timing.

    python benchmarks/latency_predictor_error.py                       # both cases
    python benchmarks/latency_predictor_error.py --case esnet_s        # one
    python benchmarks/latency_predictor_error.py --clock cpu           # on a shared machine

Writes benchmarks/results/latency_predictor_error.json and keeps each table (and its plot)
under benchmarks/results/tables/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

CASES = {
    "esnet_s": {"space": "esnet_s", "input_sizes": [320], "max_minutes": 10,
                "targets": {"within_10pct": 0.90, "mape": 0.05}, "goals": {"within_10pct": 0.95, "mape": 0.03}},
    "picodet_s_joint": {"space": "picodet_s_joint", "input_sizes": None, "max_minutes": 20,
                        "targets": {"within_10pct": 0.90, "kendall_tau": 0.90}, "goals": {}},
}


def meets(val: dict, targets: dict) -> bool:
    ok = True
    for key, bound in targets.items():
        v = val.get(key)
        ok &= v is not None and (v <= bound if key == "mape" else v >= bound)
    return bool(ok)


def main() -> None:
    from picodet_nas.latency import profile_device, write_table
    from picodet_nas.space import load_space

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES), action="append", help="case(s) to run (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--statistic", choices=("median", "p25", "p10"), default="median")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_predictor_error.json"))
    args = p.parse_args()

    out = Path(args.out)
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "loadavg_at_start": os.getloadavg()}, "cases": {}}
    for case in args.case or list(CASES):
        cfg = CASES[case]
        space = load_space(cfg["space"])
        t0 = time.time()
        table = profile_device(space, input_sizes=cfg["input_sizes"], threads=args.threads, clock=args.clock,
                               statistic=args.statistic, name=f"bench-{case}-t{args.threads}-{args.clock}")
        wall = time.time() - t0
        path, _ = write_table(table, out.parent / "tables" / f"{table['meta']['name']}.json")
        val = {k: v for k, v in table["validation"].items() if k != "samples"}
        results["cases"][case] = {
            "table": str(path),
            "input_sizes": table["meta"]["input_sizes"],
            "distinct_parts": len({e["part"] for e in table["entries"]}) + len(table["fixed"]["stem"])
            + len(table["fixed"]["neck_head"]),
            "build_wall_s": round(wall, 1),
            "build_within_time": wall <= 60 * cfg["max_minutes"],
            "validation": val,
            "calibration": {k: table["calibration"][k] for k in ("method", "a", "b", "subnets", "loo_mape")},
            "range_ms": {k: table["range_ms"][k] for k in ("fastest", "slowest")},
            "meets_targets": meets(val, cfg["targets"]),
            "meets_goals": meets(val, cfg["goals"]) if cfg["goals"] else None,
            "targets": cfg["targets"],
            "goals": cfg["goals"],
            "loadavg_after": os.getloadavg(),
        }
        print(json.dumps({case: results["cases"][case]}, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
