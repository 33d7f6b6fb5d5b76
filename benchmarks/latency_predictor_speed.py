"""How fast the latency predictor scores architectures (the search calls it millions of times).

Measures, for a table: `predict(arch)` on new architectures (dictionary lookups, no cache
hit), on repeated ones (cache hit), and `predict_indices` on a population array.

    python benchmarks/latency_predictor_speed.py --table latency_tables/<name>.json

Without --table it profiles the quickstart space at 192 with tiny repeats first (the
timings do not matter here, only the table's shape).
Writes benchmarks/results/latency_predictor_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def per_call_us(fn, items) -> float:
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return 1e6 * (time.perf_counter() - t0) / len(items)


def main() -> None:
    import numpy as np

    from picodet_nas.latency import LatencyPredictor, profile_device
    from picodet_nas.space import load_space

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", help="a latency table (default: a quick quickstart table made here)")
    p.add_argument("--n", type=int, default=20000, help="architectures to score")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_predictor_speed.json"))
    args = p.parse_args()

    if args.table:
        predictor = LatencyPredictor.from_file(args.table)
    else:
        table = profile_device(load_space("quickstart"), input_sizes=[192], repeats=2, warmup=1, burst=1,
                               calibrate=3, validate=3)
        predictor = LatencyPredictor(table)
    space = predictor.space
    rng = random.Random(0)
    sizes = predictor.input_sizes
    archs = [space.sample(rng) for _ in range(args.n)]
    archs = [a if a.input_size in sizes else a.replace(input_size=rng.choice(sizes)) for a in archs]

    predictor._cache.clear()
    new_us = per_call_us(predictor.predict, archs)
    cached_us = per_call_us(predictor.predict, archs)
    idx = predictor.encode_indices(archs)
    t0 = time.perf_counter()
    out = predictor.predict_indices(idx)
    batch_us = 1e6 * (time.perf_counter() - t0) / len(archs)
    assert np.allclose(out, predictor.predict_many(archs))
    t0 = time.perf_counter()
    extremes = predictor.range_ms()
    range_ms = 1e3 * (time.perf_counter() - t0)

    result = {
        "space": space.name,
        "input_sizes": list(sizes),
        "architectures": len(archs),
        "predict_new_arch_us": round(new_us, 2),
        "predict_cached_arch_us": round(cached_us, 3),
        "predict_indices_per_arch_us": round(batch_us, 3),
        "range_ms_compute_ms": round(range_ms, 2),
        "range_ms": {k: extremes[k] for k in ("fastest", "slowest")},
    }
    print(json.dumps(result, indent=1))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
