"""What a search writes: `best.yaml`, `pareto.csv`, `pareto.png`, `generations.csv`.

All of it is rewritten (atomically) from the history after every generation (`SearchOutputs`),
so an interrupted search still leaves readable, current outputs, and a resumed one ends with
exactly what an uninterrupted one would have written.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from picodet_nas.arch import save_arch
from picodet_nas.utils.io import atomic_write_text

from .history import Scored, SearchHistory, records_table


def best_of(candidates: Sequence[Scored]) -> Scored | None:
    """The chosen architecture: the highest mAP among the candidates (all within the budget);
    ties go to the lower predicted latency, then to the arch key."""
    return min(candidates, key=Scored.rank_key) if candidates else None


def choose(candidates: Sequence[Scored], rescored: dict | None = None) -> Scored | None:
    """The search's winner: `best_of` the candidates, or, after a re-scoring, the re-scored
    candidate with the highest new score (ties: lower latency, then the arch key)."""
    if not rescored:
        return best_of(candidates)
    again = rescored["scores"]
    pool = [c for c in candidates if c.key in again]
    return min(pool, key=lambda c: (-again[c.key]["map"], c.predicted_latency_ms, c.key)) if pool else best_of(candidates)


def pareto_front(records: Iterable[Scored]) -> list[Scored]:
    """The records no other record beats on both mAP (higher) and predicted latency (lower),
    sorted by latency. Equal points keep one representative (the first by arch key)."""
    ordered = sorted(records, key=lambda r: (r.predicted_latency_ms, -r.map, r.key))
    front: list[Scored] = []
    best_map = float("-inf")
    for r in ordered:
        if r.map > best_map:
            front.append(r)
            best_map = r.map
    return front


def generation_rows(candidates: Sequence[Scored]) -> list[dict[str, Any]]:
    """Per generation: candidates, best and mean mAP, the best so far and its latency."""
    rows, best_so_far = [], None
    for g in sorted({c.generation for c in candidates}):
        members = [c for c in candidates if c.generation == g]
        best = best_of(members)
        if best_so_far is None or best.rank_key() < best_so_far.rank_key():
            best_so_far = best
        rows.append({
            "generation": g,
            "candidates": len(members),
            "best_map": best.map,
            "mean_map": sum(c.map for c in members) / len(members),
            "best_latency_ms": best.predicted_latency_ms,
            "mean_latency_ms": sum(c.predicted_latency_ms for c in members) / len(members),
            "best_so_far_map": best_so_far.map,
            "best_so_far_latency_ms": best_so_far.predicted_latency_ms,
            "best_so_far_arch_key": best_so_far.key,
        })
    return rows


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # the exact value: scripts can compare runs bit for bit
    return "" if v is None else v


GENERATION_COLUMNS = ("generation", "candidates", "best_map", "mean_map", "best_latency_ms", "mean_latency_ms",
                      "best_so_far_map", "best_so_far_latency_ms", "best_so_far_arch_key")
PARETO_COLUMNS = ("role", "generation", "order", "origin", "map", "map50", "predicted_latency_ms", "params", "flops",
                  "on_front", "chosen", "worker", "attempts", "trial", "arch_key")


def write_generations_csv(path: Path, candidates: Sequence[Scored]) -> None:
    atomic_write_text(path, _csv(generation_rows(candidates), GENERATION_COLUMNS))


def write_pareto_csv(path: Path, candidates: Sequence[Scored], references: Sequence[Scored],
                     best: Scored | None) -> None:
    """Every candidate (proposal order) then every reference, with `on_front` (the candidates'
    Pareto front) and `chosen` (the architecture in best.yaml)."""
    front = {r.key for r in pareto_front(candidates)}
    rows = []
    for rec, row in zip([*candidates, *references], records_table([*candidates, *references])):
        row["on_front"] = int(rec.role == "candidate" and rec.key in front)
        row["chosen"] = int(best is not None and rec.key == best.key and rec.role == best.role)
        rows.append(row)
    atomic_write_text(path, _csv(rows, PARETO_COLUMNS))


def plot_pareto(path: Path, candidates: Sequence[Scored], references: Sequence[Scored], best: Scored | None,
                budget_ms: float, title: str) -> None:
    """mAP vs predicted latency: every candidate (coloured by generation), the front, the
    budget, the chosen architecture and the uniform-width references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (integer generation ticks)

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    try:
        if candidates:
            gens = [c.generation for c in candidates]
            sc = ax.scatter([c.predicted_latency_ms for c in candidates], [c.map for c in candidates], c=gens,
                            cmap="viridis", s=14, alpha=0.75, label="candidates", zorder=2)
            if max(gens) > 0:
                bar = fig.colorbar(sc, ax=ax, label="generation")
                bar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            front = pareto_front(candidates)
            ax.step([r.predicted_latency_ms for r in front], [r.map for r in front], where="post", color="tab:red",
                    lw=1.2, marker="o", mfc="none", ms=7, label="Pareto front", zorder=3)
        if references:
            ax.plot([r.predicted_latency_ms for r in references], [r.map for r in references], "s--",
                    color="tab:gray", ms=6, lw=0.8, label="uniform-width references", zorder=3)
            for r in references:
                ax.annotate(f"x{r.arch.channel_ratio[0]:g}", (r.predicted_latency_ms, r.map), fontsize=7,
                            xytext=(4, -9), textcoords="offset points", color="tab:gray")
        ax.axvline(budget_ms, color="black", ls=":", lw=1.2, label=f"budget {budget_ms:g} ms")
        if best is not None:
            ax.scatter([best.predicted_latency_ms], [best.map], marker="*", s=220, color="gold", edgecolor="black",
                       zorder=5, label=f"chosen: mAP {best.map:.4f} @ {best.predicted_latency_ms:.2f} ms")
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel("supernet mAP@[.5:.95] (held-out subset)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)


def write_best_yaml(path: Path, best: Scored, *, space_ref: Mapping[str, str], provenance: Mapping[str, Any],
                    extra_scores: Mapping[str, Any] | None = None, lead: Mapping[str, Any] | None = None) -> None:
    """`best.yaml`: top-level `arch`, `space` {name, fingerprint}, `provenance` and `scores`
    {map, predicted_latency_ms, params, flops, and the re-scoring's figures when there was one},
    and `lead_check` (`evolution.lead.LeadCheck.to_dict`) when the winner's lead was checked;
    loadable by `load_arch_file`."""
    extra: dict[str, Any] = {
        "space": dict(space_ref),
        "provenance": dict(provenance),
        "scores": {"map": best.map, "predicted_latency_ms": best.predicted_latency_ms, "params": best.params,
                   "flops": best.flops, **dict(extra_scores or {})},
    }
    if lead is not None:
        extra["lead_check"] = dict(lead)
    save_arch(best.arch, path, extra=extra)


def generation_scalars(history: SearchHistory, g: int, best: Scored | None) -> dict[str, float]:
    """The search's curve after generation `g`: the best-so-far and the generation's own scores."""
    own = [c.map for c in history.candidates(generation=g)]
    out = {"candidates": float(len(history.candidates()))}
    if best is not None:
        out.update(best_mAP=best.map, best_predicted_ms=best.predicted_latency_ms)
    if own:
        out.update(generation_mean_mAP=sum(own) / len(own), generation_max_mAP=max(own))
    return out


class SearchOutputs:
    """Rewrites the outputs of the run directory from the history; returns the chosen architecture."""

    def __init__(self, run_dir: Path, space, budget_ms: float, provenance: dict, title: str):
        self.run_dir = run_dir
        self.space = space
        self.budget_ms = budget_ms
        self.provenance = provenance
        self.title = title

    def write(self, history: SearchHistory, rescored: dict | None = None, lead=None) -> Scored | None:
        """`rescored` (`evolution.rescore.rescore`): choose among the re-scored candidates by their new
        score; `lead` (`evolution.lead.LeadCheck`): when it did not keep the winner, the chosen
        network is its uniform-width reference."""
        candidates, references = history.candidates(), history.references()
        best = choose(candidates, rescored)
        extra_scores: dict[str, Any] = {}
        if lead is not None and not lead.kept:
            best = next(r for r in [*candidates, *references] if r.key == lead.reference)
        if rescored and best is not None:
            again = rescored["scores"].get(best.key)
            # the lead check's reference may not be among the re-scored: its score on the same images
            extra_scores = {"rescore_map": again["map"] if again else (lead.reference_map if lead else None),
                            "rescore_map50": again["map50"] if again else None,
                            "rescore_images": rescored["images"], "rescored_candidates": len(rescored["scores"])}
        write_generations_csv(self.run_dir / "generations.csv", candidates)
        write_pareto_csv(self.run_dir / "pareto.csv", candidates, references, best)
        plot_pareto(self.run_dir / "pareto.png", candidates, references, best, self.budget_ms, self.title)
        if best is not None:
            write_best_yaml(self.run_dir / "best.yaml", best, space_ref=self.space.ref(),
                            provenance={**self.provenance, "generation": best.generation,
                                        "candidates": len(candidates)}, extra_scores=extra_scores,
                            lead=lead.to_dict() if lead is not None else None)
        return best
