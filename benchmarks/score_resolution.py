"""How small a difference in supernet score can a search trust?

A search's candidates are ranked by their supernet mAP on a fixed set of search-split images.
This benchmark takes a finished `nas evolve` run and re-scores, exactly as the search scored
them (the run's calibration and scoring images, its supernet), the chosen subnet and the
hand-designed references that meet the budget. It then estimates the standard error of each
score and of each paired difference (chosen − reference) over the images, with the delete-half
jackknife: the figure on `--halves` random halves of the scored images, whose spread estimates
the standard error on all of them ((n - d) / d = 1 for d = n / 2).

A lead smaller than about 2 standard errors of the paired difference is not a lead: the same
supernet on other images of the same distribution would order the two the other way.

    python benchmarks/score_resolution.py --evolve-dir runs/bench/search-gain-gt-uniform-pd-s0/evolve \\
        --out benchmarks/results/score_resolution.json
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import yaml
from train_common import write_result

from evolution.lead import jackknife_halves, subset_map
from evolution.scoring import NetworkScorer, ScoringData
from picodet_nas.arch import Arch, load_arch_file
from picodet_nas.checkpoint import apply_state, load_model_weights
from picodet_nas.data import resolve_data
from picodet_nas.space import SearchSpace
from supernet.supernet import Supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evolve-dir", type=Path, required=True, help="a finished nas evolve run folder")
    ap.add_argument("--halves", type=int, default=100, help="random halves of the scored images (default: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    cfg = yaml.safe_load((args.evolve_dir / "config.yaml").read_text())
    rows = list(csv.DictReader((args.evolve_dir / "pareto.csv").open()))
    budget = float(cfg["budget_ms"])
    chosen = next(r for r in rows if r["chosen"] == "1")
    refs = [r for r in rows if r["role"] == "reference" and float(r["predicted_latency_ms"]) <= budget
            and r["arch_key"] != chosen["arch_key"]]
    state, meta = load_model_weights(cfg["supernet"], kind="supernet", needs="a supernet")
    space = SearchSpace.from_dict(meta["space_definition"])
    supernet = Supernet.for_state(space, meta["num_classes"], state)
    apply_state(supernet, state, cfg["supernet"])
    supernet.eval()
    images = str(resolve_data(cfg["data"]).train_images)  # both subsets are training images
    data = ScoringData(calib_ann=str(args.evolve_dir / "data" / "calib.json"), calib_images=images,
                       val_ann=str(args.evolve_dir / "data" / "val.json"), val_images=images,
                       batch_size=int(cfg.get("batch_size", 16)))
    scorer = NetworkScorer(data)
    winner, _ = load_arch_file(args.evolve_dir / "best.yaml")
    uniform = {a.replace(input_size=size).key(): a.replace(input_size=size)
               for a in space.uniform_archs() for size in space.input_sizes}
    decode = {**uniform, winner.key(): winner}
    if chosen["arch_key"] != winner.key():
        sys.exit(f"{args.evolve_dir}: best.yaml is not the chosen row of pareto.csv")
    scored = {}
    for r in [chosen, *refs]:
        arch: Arch = decode[r["arch_key"]]
        scored[r["arch_key"]] = scorer.detect(supernet.extract(arch), arch.input_size)
        print(f"re-scored {r['arch_key']}: search's score {float(r['map']):.4f}", flush=True)

    def mAP(key: str, ids) -> float:
        return subset_map(scored[key], ids)

    image_ids = scored[chosen["arch_key"]][2]
    # the halves of `nas evolve`'s lead check (sorted ids, then sampled: the committed JSON, made
    # before the check existed, sampled the unsorted list, so a rerun draws other halves)
    halves = jackknife_halves(image_ids, args.halves, args.seed)
    full = {k: mAP(k, image_ids) for k in scored}
    half = {k: [mAP(k, h) for h in halves] for k in scored}
    out_rows = []
    for r in [chosen, *refs]:
        k = r["arch_key"]
        row = {"arch_key": k, "role": "chosen" if r is chosen else "reference",
               "predicted_latency_ms": float(r["predicted_latency_ms"]), "search_score": float(r["map"]),
               "rescored": full[k], "se": statistics.stdev(half[k])}
        if r is not chosen:
            diffs = [a - b for a, b in zip(half[chosen["arch_key"]], half[k])]
            row["chosen_minus_this"] = full[chosen["arch_key"]] - full[k]
            row["se_of_difference"] = statistics.stdev(diffs)
            row["z"] = row["chosen_minus_this"] / row["se_of_difference"] if row["se_of_difference"] else None
        out_rows.append(row)
        print(f"{row['role']:>9} {k[-22:]:>22} {row['predicted_latency_ms']:.3f} ms  score {full[k]:.4f} "
              f"(se {row['se']:.4f})" + (f"  chosen - this {row['chosen_minus_this']:+.4f} "
                                          f"(se {row['se_of_difference']:.4f}, z {row['z']:+.2f})"
                                          if r is not chosen else ""), flush=True)
    write_result(args.out, {"benchmark": "score_resolution", "command": " ".join(sys.argv),
                            "evolve_dir": str(args.evolve_dir), "budget_ms": budget, "images": len(image_ids),
                            "halves": args.halves, "rows": out_rows,
                            "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
