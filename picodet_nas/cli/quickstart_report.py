"""`nas quickstart`'s report: the supernet's training curves and report.md, written from the
run's summary (summary.json). Paths in the report are relative to the run folder, so that the
folder can move."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from ..utils.io import atomic_write_text

REPORT_FILE = "report.md"


# ---- figures -------------------------------------------------------------------------------
def plot_supernet_curves(metrics_csv: Path, png: Path) -> Path:
    """Training loss per epoch, and the mAP of the largest and the smallest subnet at every
    evaluation, from the supernet's metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(metrics_csv.open()))

    def column(name: str) -> tuple[list[int], list[float]]:
        pairs = [(int(r["epoch"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    try:
        ax_loss.plot(*column("loss"), marker="o", ms=3, label="loss")
        for part in ("loss_vfl", "loss_giou", "loss_dfl"):
            ax_loss.plot(*column(part), lw=0.8, ls="--", label=part[5:])
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("training loss (sampled subnets)")
        ax_loss.grid(alpha=0.3)
        ax_loss.legend(fontsize=8)
        for which, colour in (("largest", "tab:blue"), ("smallest", "tab:orange")):
            ax_map.plot(*column(f"{which}_mAP"), marker="o", color=colour, label=f"{which} mAP")
            ax_map.plot(*column(f"{which}_mAP50"), marker="x", ls="--", color=colour, label=f"{which} mAP50")
        ax_map.set_xlabel("epoch")
        ax_map.set_ylabel("search-split mAP (BN recalibrated)")
        ax_map.grid(alpha=0.3)
        ax_map.legend(fontsize=8)
        fig.suptitle("supernet training")
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
    finally:
        plt.close(fig)
    return png


# ---- the report ----------------------------------------------------------------------------
def _pareto_check_lines(check: Mapping[str, Any] | None, lead: Mapping[str, Any] | None = None) -> list[str]:
    """The chosen subnet's supernet score against the uniform-width references near its latency
    (and, when the lead check returned the uniform network, why)."""
    if not check:
        return []
    if check.get("winner_is_reference"):
        if lead and not lead.get("kept"):
            z = lead["z"] if isinstance(lead["z"], str) else f"{lead['z']:+.2f}"
            return [f"The search returned a uniform-width network ({check['winner_is_reference']}): its best "
                    f"candidate led it by {lead['lead']:+.4f} mAP on {lead['images']} search-split images, "
                    f"{z} standard errors of the paired difference, below the lead check's {lead['min_z']:g} "
                    "(`--min-lead-z`): a tie the scores cannot resolve.", ""]
        return [f"The search chose a uniform-width network itself ({check['winner_is_reference']}): it found no "
                "subnet the supernet scores higher near this latency.", ""]
    if not check["references"]:
        return [f"No uniform-width reference lies within {check['tolerance']:.0%} of the chosen subnet's predicted "
                "latency.", ""]
    refs = ", ".join(f"{r['label']} {r['map']:.4f} ({r['predicted_latency_ms']:.3f} ms)" for r in check["references"])
    verdict = "above every one" if check["winner_above_all"] else "**not** above every one"
    return [f"Uniform-width references within {check['tolerance']:.0%} of its predicted latency, as the supernet "
            f"scores them: {refs}. The chosen subnet's {check['winner_map']:.4f} is {verdict}.", ""]


def _comparison_lines(s: Mapping[str, Any]) -> list[str]:
    """`--compare`: the winner and the uniform-width reference, retrained alike, side by side."""
    if "compare" not in s:
        return []
    ref, final, evo = s["compare"], s["retrain"], s["evolve"]
    return [
        "## Searched vs uniform width",
        "",
        f"The uniform-width reference nearest the winner's predicted latency that the supernet scored highest "
        f"({ref['label']}), retrained with the same settings and initialisation (`{ref['metrics']}`), on the "
        "validation split:",
        "",
        "| network | supernet score (search split) | predicted latency | retrained mAP | retrained mAP50 |",
        "|---|---|---|---|---|",
        f"| searched | {_fmt(evo['scores'].get('map'))} | {_fmt(final.get('predicted_latency_ms'), '.3f', ' ms')} | "
        f"{_fmt(final['coco'].get('mAP'))} | {_fmt(final['coco'].get('mAP50'))} |",
        f"| {ref['label']} | {_fmt(ref['supernet_map'])} | {_fmt(ref['predicted_latency_ms'], '.3f', ' ms')} | "
        f"{_fmt(ref['coco'].get('mAP'))} | {_fmt(ref['coco'].get('mAP50'))} |",
        "",
        "One seed each: a difference smaller than the seed-to-seed spread of these short schedules (see the "
        "README's benchmarks) is not a result.",
        "",
    ]



def _fmt(value: Any, spec: str = ".4f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{unit}"


def write_report(path: Path, s: Mapping[str, Any]) -> Path:
    """report.md from the run's summary: what ran, how long each stage took, the figures and
    the final model's numbers. Paths are relative to the run folder, so the folder can move."""
    lat, budget, evo, final = s["latency"], s["budget"], s["evolve"], s["retrain"]
    coco = final["coco"]
    val = lat["validation"]
    sn = s["supernet"]
    lines = [
        "# picodet-nas quick start",
        "",
        f"Run of {s['date']} on {s['machine']['cpu_model']} ({s['machine']['cpu_count']} CPUs, "
        f"{s['machine']['torch_threads']} PyTorch thread(s)); settings from "
        + ", ".join(f"`{src}`" for src in s["config"]["sources"]) + f", seed {s['config']['seed']}.",
        "",
        "## Stages",
        "",
        "| stage | what | folder | time |",
        "|---|---|---|---|",
        *[f"| {r['stage']} | {r['what']} | `{r['folder']}/` | {r['seconds']:.0f} s |" for r in s["stages"]],
        f"| **total** | | | **{s.get('total_seconds', sum(r['seconds'] for r in s['stages'])):.0f} s** |",
        "",
        "## Supernet training",
        "",
        f"{sn['epochs']} epoch(s) one-shot on the generated data; after the last one the largest subnet scores "
        f"mAP {_fmt(sn['metrics'].get('largest_mAP'))} and the smallest {_fmt(sn['metrics'].get('smallest_mAP'))} "
        f"(each with exact BN statistics of its weights), scored on the search split: training images held out "
        f"from supernet training, on which the search also scores; the validation split is used only for the "
        f"final model below. Checkpoint: `{sn['checkpoint']}`.",
        "",
        f"![supernet training curves]({sn['curves']})",
        "",
        "## Latency table of this machine",
        "",
        f"`{lat['table']}`: ONNX Runtime, {lat['threads']} thread(s), {lat['repeats']} timed runs per part. The "
        f"space spans {lat['fastest_ms']:.3f} to {lat['slowest_ms']:.3f} ms (predicted). On {val['subnets']} "
        f"random subnets the predictor's mean absolute error is {_fmt(val['mape'], '.1%')}, "
        f"{_fmt(val['within_10pct'], '.0%')} of them within ±10%, Kendall tau {_fmt(val['kendall_tau'], '.3f')}.",
        "",
        f"![predicted vs measured latency]({lat['plot']})",
        "",
        "## Search",
        "",
        f"Latency budget **{budget['ms']:g} ms** ({budget['how']}). {evo['candidates']} candidates in "
        f"{evo['generations']} generation(s); the chosen subnet (`{evo['best_yaml']}`) scores supernet mAP "
        f"{_fmt(evo['scores'].get('map'))} at {_fmt(evo['scores'].get('predicted_latency_ms'), '.3f', ' ms')} "
        f"predicted. The plot shows every candidate, the Pareto front, the chosen point and the space's "
        f"uniform-width networks for reference.",
        "",
        f"![Pareto front]({evo['pareto']})",
        "",
        *_pareto_check_lines(evo.get("pareto_check"), evo.get("lead_check")),
        "Chosen architecture: " + ", ".join(f"{k} `{v}`" for k, v in evo["arch"].items()) + ".",
        "",
        "## Final model",
        "",
        f"Retrained from {final.get('init') or 'scratch'} weights for {final['epochs']} epoch(s) "
        f"({final['wall_time_s']:.0f} s), exported to `{final['onnx']}`, evaluated again by `nas eval` "
        f"(`{s['eval']['metrics']}`).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(coco.get(k))} |" for k in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium",
                                                     "mAP_large", "AR100")],
        f"| params | {final['params'] / 1e6:.3f} M |",
        f"| FLOPs | {final['flops'] / 1e9:.3f} G |",
        f"| predicted latency | {_fmt(final.get('predicted_latency_ms'), '.3f', ' ms')} |",
        f"| measured latency | {_fmt(final.get('measured_latency_ms'), '.3f', ' ms')} |",
        f"| measured / predicted | {_fmt(final.get('latency_ratio'), '.3f')} |",
        f"| machine speed against the table's (its validation subnets timed beside the model) | "
        f"{_fmt(final.get('machine_speed'), '.3f')} |",
        f"| measured / predicted at the table's speed (anchored) | {_fmt(final.get('anchored_latency_ratio'), '.3f')} |",
        f"| latency budget | {_fmt(final.get('latency_budget_ms'), 'g', ' ms')} |",
        f"| budget met | {'n/a' if final.get('budget_met') is None else ('yes' if final['budget_met'] else 'no')} |",
        "",
        *_comparison_lines(s),
        "The generated data and the short schedules make these numbers a demonstration of the pipeline, "
        "not of PicoDet's accuracy: the real-scale settings are the commands' defaults.",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))
    return path
