"""The validation plot written next to a latency table: predicted against measured latency."""

from __future__ import annotations

from pathlib import Path


def plot_validation(table: dict, path: str | Path) -> Path:
    """Scatter of the validation (and calibration) subnets with y = x and the ±10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    val, cal = table["validation"], table["calibration"]
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    points = []
    if cal.get("samples"):
        a, b = cal["a"], cal["b"]
        xs = [s["measured_ms"] for s in cal["samples"]]
        ys = [a * s["sum_ms"] + b for s in cal["samples"]]
        ax.scatter(xs, ys, s=14, marker="x", color="tab:gray", label=f"calibration ({len(xs)})")
        points += xs + ys
    if val.get("samples"):
        xs = [s["measured_ms"] for s in val["samples"]]
        ys = [s["predicted_ms"] for s in val["samples"]]
        ax.scatter(xs, ys, s=18, color="tab:blue", label=f"validation ({len(xs)})")
        points += xs + ys
    lo, hi = (min(points), max(points)) if points else (0.0, 1.0)
    pad = 0.05 * (hi - lo or hi or 1.0)
    lo, hi = max(0.0, lo - pad), hi + pad
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y = x")
    ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="tab:green", alpha=0.12,
                    label="±10%")
    ax.plot([lo, hi], [0.95 * lo, 0.95 * hi], color="tab:green", lw=0.6, ls="--", label="±5%")
    ax.plot([lo, hi], [1.05 * lo, 1.05 * hi], color="tab:green", lw=0.6, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    meta = table["meta"]
    title = (f"{meta.get('name', '')}\n{meta['backend']} {meta['backend_version']}, {meta['threads']} thread(s), "
             f"{meta.get('clock', 'wall')} clock, {meta['statistic']}")
    if val.get("mape") is not None:
        tau = val.get("kendall_tau")
        title += (f"\nMAPE {100 * val['mape']:.1f}%, within ±10% {100 * val['within_10pct']:.0f}%"
                  + (f", tau {tau:.2f}" if tau is not None else ""))
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
