"""What each gene group is worth, to the ground truth and to each supernet: an ordinary
least-squares fit, over the ground-truth architectures, of the score on the architecture's gene
summaries (mean channel ratio, mean kernel, neck channels / 16, head depth, input size / 32).

A supernet that ranks like the ground truth credits each gene group about as the ground truth
does; a coefficient far below the ground truth's is a gene the supernet is blind to. Scorers
score on different scales (a supernet's subnets may all score higher or lower than trained
alone), and a ranking depends only on the ratios, so each fit is also given relative to its own
input-size coefficient (one 32-pixel step = 1). The fit has
14 points and 6 unknowns, and the ground truth's architectures move some genes together (the
"kernel+neck+head" profile), so coefficients come with their standard errors and the pairwise
correlations of the design are printed: read differences larger than the errors only.

    python benchmarks/gene_effects.py --ground-truth benchmarks/results/ground_truth.json \\
        --rankings benchmarks/results/ranking_vs_ground_truth.json --out benchmarks/results/gene_effects.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from train_common import write_result

FEATURES = ("ratio", "kernel", "neck/16", "head", "input/32")


def design(archs: list[dict]) -> np.ndarray:
    """One row per architecture: intercept, then `FEATURES`."""
    return np.array([[1.0, np.mean(a["channel_ratio"]), np.mean(a["kernel_size"]), a["neck_channels"] / 16,
                      a["head_convs"], a["input_size"] / 32] for a in archs])


def fit(x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """OLS coefficients of `FEATURES` with standard errors (intercept left out)."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    dof = max(1, len(y) - x.shape[1])
    cov = (resid @ resid / dof) * np.linalg.pinv(x.T @ x)
    se = np.sqrt(np.diag(cov))
    unit = coef[1 + FEATURES.index("input/32")]
    return {name: {"coef": round(float(coef[i + 1]), 4), "se": round(float(se[i + 1]), 4),
                   "relative": round(float(coef[i + 1] / unit), 3)} for i, name in enumerate(FEATURES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ground-truth", type=Path, required=True)
    ap.add_argument("--rankings", type=Path, nargs="+", required=True,
                    help="benchmarks/ranking_vs_ground_truth.py result JSONs")
    ap.add_argument("--out")
    args = ap.parse_args()

    gt = json.loads(args.ground_truth.read_text())
    rows = [r for r in gt["archs"] if r["mAP"]]
    x = design([r["arch"] for r in rows])
    corr = np.corrcoef(x[:, 1:].T)
    result = {"benchmark": "gene_effects", "ground_truth": str(args.ground_truth),
              "rankings": [str(p) for p in args.rankings], "archs": len(rows), "features": list(FEATURES),
              "design_correlation": {f"{FEATURES[i]} ~ {FEATURES[j]}": round(float(corr[i, j]), 3)
                                     for i in range(len(FEATURES)) for j in range(i + 1, len(FEATURES))},
              "fits": {"ground truth": fit(x, np.array([np.mean(list(r["mAP"].values())) for r in rows]))}}
    for path in args.rankings:
        for s in json.loads(path.read_text())["supernets"]:
            name = (f"{s['strategy']}{'' if not s.get('distill') else ' ' + format(s['distill'], 'g')}"
                    f"{'' if s.get('head_per_depth', 'none') == 'none' else ' per-depth ' + s['head_per_depth']}"
                    f" e{s['epochs']}{' seed ' + str(s['seed']) if 'seed' in s else ''}")
            y = np.array([s["supernet_mAP"][str(r["index"])] for r in rows])
            result["fits"][name] = fit(x, y)
    print("design correlations above 0.5: " + ", ".join(
        f"{k} {v:+.2f}" for k, v in result["design_correlation"].items() if abs(v) > 0.5))
    print(f"{'scorer':<40}" + "".join(f"{f:>17}" for f in FEATURES))
    for name, coefs in result["fits"].items():
        print(f"{name:<40}" + "".join(f"{c['coef']:>+9.3f} ±{c['se']:.3f}" for c in coefs.values()))
    print("relative to each scorer's input-size coefficient:")
    for name, coefs in result["fits"].items():
        print(f"{name:<40}" + "".join(f"{c['relative']:>+17.2f}" for c in coefs.values()))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
