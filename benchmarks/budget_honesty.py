"""Does a searched network keep its latency budget once it is a real model? For three budgets
(20%, 50% and 80% of the way from the fastest to the slowest subnet of the table), `nas evolve`
searches the quick-start supernet under the budget, `nas retrain best.yaml` retrains the winner
and times the exported `model.onnx` exactly as the table was measured; the figure is measured
latency / budget (<= 1: the budget was kept) next to measured / predicted.

Latency does not depend on the weights, so the retrain is short by default (`--retrain-epochs 1`);
it is run all the same so that the figure comes from the path users get (`metrics.json` of
`nas retrain best.yaml`). The supernet is the one `benchmarks/supernet_ranking.py` trained
(uniform), or one trained here with the quick start's settings.

    python benchmarks/budget_honesty.py --out runs/bench/budget_honesty.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml
from supernet_ranking import DEFAULT_TABLE, evolve_command, quickstart_supernet, run
from train_common import BENCH_ROOT, ensure_shapes, write_result

from picodet_nas.cli.quickstart_config import CONFIG_FILE
from picodet_nas.cli.quickstart_pipeline import choose_budget
from picodet_nas.latency.predictor import LatencyPredictor


def main() -> None:
    qs = yaml.safe_load(CONFIG_FILE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a shapes dataset (default: generated as the quick start's)")
    ap.add_argument("--strategy", default=None, choices=["uniform", "sandwich"],
                    help="which of the ranking benchmark's supernets to use when --supernet is not given "
                         "(default: the quick start's)")
    ap.add_argument("--supernet", type=Path, help="supernet.pt of the table's space (default: the ranking "
                    "benchmark's uniform supernet, trained here if missing)")
    ap.add_argument("--latency-table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 0.8],
                    help="budgets as fractions of the table's fastest-to-slowest range")
    ap.add_argument("--retrain-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, help="where the runs go (default: runs/bench/budget-honesty-s<seed>); "
                    "finished stages found there are reused")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    ds = qs["dataset"]
    data = args.data or ensure_shapes(ds["train"], ds["val"], ds["image_size"], args.seed)
    sn = qs["supernet"]
    run_dir = args.run_dir or BENCH_ROOT / f"budget-honesty-s{args.seed}"
    supernet = args.supernet or quickstart_supernet(qs, qs["space"], args.seed,
                                                    args.strategy or qs["supernet"]["strategy"])
    nas = [sys.executable, "-m", "picodet_nas.cli.main"]
    if not supernet.is_file():
        supernet = run_dir / "supernet" / "supernet.pt"
        if not supernet.is_file():
            run(nas + ["train-supernet", "--space", qs["space"], "--data", str(data), "--strategy", "uniform",
                       "--epochs", str(sn["epochs"]), "--batch-size", str(sn["batch_size"]), "--lr", str(sn["lr"]),
                       "--warmup-iters", str(sn["warmup_iters"]), "--eval-interval", str(sn["epochs"]),
                       "--calib-images", str(sn["calib_images"]), "--workers", "0", "--seed", str(args.seed),
                       "--out", str(supernet.parent)], args.threads)

    predictor = LatencyPredictor.from_file(args.latency_table)
    ev = qs["evolve"]
    rows = []
    for fraction in args.fractions:
        budget = choose_budget(predictor.range_ms(), fraction)
        evolve_dir = run_dir / f"evolve-{fraction:g}"
        if not (evolve_dir / "best.yaml").is_file():
            run(evolve_command(nas, supernet, args.latency_table, budget, data, ev, args.seed, evolve_dir), args.threads)
        retrain_dir = run_dir / f"retrain-{fraction:g}"
        if not (retrain_dir / "metrics.json").is_file():
            run(nas + ["retrain", str(evolve_dir / "best.yaml"), "--data", str(data), "--epochs",
                       str(args.retrain_epochs), "--batch-size", "16", "--workers", "0", "--seed", str(args.seed),
                       "--device", "cpu", "--out", str(retrain_dir)], args.threads)
        m = json.loads((retrain_dir / "metrics.json").read_text())
        rows.append({"fraction": fraction, "budget_ms": budget, "predicted_ms": m["predicted_latency_ms"],
                     "measured_ms": m["measured_latency_ms"], "measured_over_budget": m["measured_latency_ms"] / budget,
                     "measured_over_predicted": m["measured_latency_ms"] / m["predicted_latency_ms"],
                     "budget_met": m["budget_met"]})

    print(f"\n{'budget ms':>9} {'predicted':>9} {'measured':>9} {'meas/budget':>11} {'meas/pred':>9}  met")
    for r in rows:
        print(f"{r['budget_ms']:>9.3f} {r['predicted_ms']:>9.3f} {r['measured_ms']:>9.3f} "
              f"{r['measured_over_budget']:>11.3f} {r['measured_over_predicted']:>9.3f}  {r['budget_met']}")
    write_result(args.out, {"benchmark": "budget_honesty", "latency_table": str(args.latency_table),
                            "supernet": str(supernet), "data": str(data), "threads": args.threads, "rows": rows,
                            "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
