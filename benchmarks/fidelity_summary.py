"""Pools `supernet_ranking.py --archs 2` runs of several seeds into one fidelity table.

Each input JSON holds, for one seed, the largest and the smallest architecture trained alone and
the score of the same architectures in each supernet it trained. This prints, per strategy and
per landmark, the seed-by-seed scores, the means, the share of the stand-alone mean (issue 13's
bar is 50%) and, for every pair of strategies, a paired t-test over the seeds on the subnet's mAP
(scipy.stats.ttest_rel: the same architecture and seed in both supernets, so the noise of the
stand-alone network does not enter). It trains nothing.

    python benchmarks/fidelity_summary.py benchmarks/results/supernet_fidelity_quickstart_clip5_s[13].json \
        benchmarks/results/supernet_fidelity_quickstart_noclip_supernet_s[13].json \
        --out benchmarks/results/supernet_fidelity_quickstart_clip_summary.json

A file that is not such a result is refused in one line, exit code 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

LANDMARKS = ("largest", "smallest")


def paired_test(after: np.ndarray, before: np.ndarray) -> dict:
    """after - before over the seeds: the mean difference, how many seeds went up, and the
    paired t-test (scipy.stats.ttest_rel; None with a single seed)."""
    t = stats.ttest_rel(after, before) if len(after) > 1 else None
    return {"mean_difference": float((after - before).mean()), "seeds_higher": int((after > before).sum()),
            "t": None if t is None else float(t.statistic), "p": None if t is None else float(t.pvalue),
            "df": len(after) - 1}


def load_runs(paths: list[Path]) -> list[dict]:
    """One entry per seed. Files of the same seed (say, a second run that trained only the
    supernets again with another --supernet-grad-clip) are merged; their stand-alone networks must
    be the same ones. Each supernet is named by its rule and its gradient clipping."""
    by_seed: dict[int, dict] = {}
    for p in paths:
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: cannot read a JSON result ({e})") from None
        if not isinstance(d, dict) or d.get("benchmark") != "supernet_ranking" or len(d.get("archs", [])) < 2:
            raise ValueError(f"{p}: expected a supernet_ranking.py result with --archs 2")
        clip = d.get("supernet_grad_clip", d.get("grad_clip", 0.0))
        archs = d["archs"][:2]
        scores = {f"{s}, clip {clip:g}": [a[f"{s}_mAP"] for a in archs] for s in d["strategies"]}
        alone = [a["standalone_mAP"] for a in archs]
        run = by_seed.setdefault(d["seed"], {"seed": d["seed"], "paths": [], "alone": alone, "scores": {}})
        if run["alone"] != alone:
            raise ValueError(f"{p}: seed {d['seed']} has other stand-alone networks than {run['paths'][0]}")
        if set(scores) & set(run["scores"]):
            raise ValueError(f"{p}: seed {d['seed']} scores {sorted(set(scores) & set(run['scores']))} twice")
        run["paths"].append(str(p))
        run["scores"].update(scores)
    return [by_seed[k] for k in sorted(by_seed)]


def summarise(runs: list[dict]) -> dict:
    strategies = [s for s in runs[0]["scores"] if all(s in r["scores"] for r in runs)]
    out = {"seeds": [r["seed"] for r in runs], "inputs": [p for r in runs for p in r["paths"]], "landmarks": {}}
    for i, name in enumerate(LANDMARKS):
        alone = np.array([r["alone"][i] for r in runs])
        row = {"alone": alone.tolist(), "alone_mean": float(alone.mean()), "strategies": {}}
        for s in strategies:
            m = np.array([r["scores"][s][i] for r in runs])
            row["strategies"][s] = {"mAP": m.tolist(), "mean": float(m.mean()),
                                    "share_of_alone_mean": float(m.mean() / alone.mean()),
                                    "share_by_seed": (m / alone).tolist()}
        tests = {}
        for a, b in itertools.combinations(strategies, 2):
            test = paired_test(np.array(row["strategies"][b]["mAP"]), np.array(row["strategies"][a]["mAP"]))
            tests[f"{b} - {a}"] = {**test, "share_of_alone_mean_difference": test["mean_difference"] / alone.mean()}
        row["paired_tests"] = tests
        out["landmarks"][name] = row
    return out


def print_table(s: dict) -> None:
    for name, row in s["landmarks"].items():
        strategies = list(row["strategies"])
        print(f"\n{name}: seed | alone | " + " | ".join(strategies))
        for k, seed in enumerate(s["seeds"]):
            cells = [f"{row['strategies'][st]['mAP'][k]:.4f} ({row['strategies'][st]['share_by_seed'][k]:.0%})"
                     for st in strategies]
            print(f"  {seed} | {row['alone'][k]:.4f} | " + " | ".join(cells))
        cells = [f"{row['strategies'][st]['mean']:.4f} ({row['strategies'][st]['share_of_alone_mean']:.0%})"
                 for st in strategies]
        print(f"  mean | {row['alone_mean']:.4f} | " + " | ".join(cells))
        for pair, t in row["paired_tests"].items():
            tp = "" if t["t"] is None else f", t {t['t']:.2f}, p {t['p']:.2f} ({t['df']} df)"
            print(f"  {pair}: mAP {t['mean_difference']:+.4f} ({t['share_of_alone_mean_difference']:+.0%} "
                  f"of the stand-alone mean) on average, higher on "
                  f"{t['seeds_higher']} of {len(s['seeds'])} seeds{tp}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="supernet_ranking.py JSONs, one per seed")
    ap.add_argument("--out", type=Path, help="write the summary here as JSON")
    args = ap.parse_args(argv)
    try:
        s = summarise(load_runs(args.results))
    except ValueError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    s["command"] = " ".join(["benchmarks/fidelity_summary.py", *(sys.argv[1:] if argv is None else argv)])
    print_table(s)
    if args.out:
        args.out.write_text(json.dumps(s, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
