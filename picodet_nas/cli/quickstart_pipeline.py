"""`nas quickstart`: the whole system on a generated dataset, on the CPU, in minutes.

    stage      runs (the library call behind the command)           writes into the run folder
    data       make_shapes_dataset            (nas make-dataset)    data/
    supernet   supernet.train.train_supernet  (nas train-supernet)  supernet/  (+ curves.png)
    profile    latency.profile_device         (nas profile-device)  latency/   (table + validation plot)
    budget     fastest + fraction x (slowest - fastest) predicted, printed
    evolve     evolution.run_evolve           (nas evolve)          evolve/    (best.yaml, pareto.png...)
    retrain    engine.retrain.retrain         (nas retrain)         retrain/   (model.pt, model.onnx, metrics.json)
    eval       engine.retrain.evaluate_checkpoint (nas eval)        eval/
    report                                                          report.md, summary.json

Every stage runs exactly what its command runs, with the small settings of one experiment file
(`picodet_nas/configs/quickstart.yaml`, optionally overridden by `--config`; see
`quickstart_config`), so the commands' own defaults stay the published real-scale ones. This
module lives in the CLI package because it is the one place allowed to see picodet_nas,
supernet and evolution together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import UserError
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.logs import close_run_log, open_run_log
from .config import dump
from .quickstart_config import QuickstartConfig
from .quickstart_report import REPORT_FILE, plot_supernet_curves, write_report

SUMMARY_FILE = "summary.json"
LOG_FILE = "quickstart.log"


# ---- the budget ----------------------------------------------------------------------------
def choose_budget(range_ms: Mapping[str, Any], fraction: float) -> float:
    """The latency budget `fraction` of the way from the fastest to the slowest predicted
    subnet of the table, rounded up to the microsecond (so that fraction 0 still admits the
    fastest subnet). The middle of the range is where a search has something to choose: near
    the fastest end only the narrowest networks fit, near the slowest end everything does."""
    fastest, slowest = float(range_ms["fastest"]), float(range_ms["slowest"])
    return math.ceil((fastest + fraction * (slowest - fastest)) * 1000 - 1e-6) / 1000


# ---- the pipeline --------------------------------------------------------------------------
class _Stages:
    """Times the stages, announces them on stdout and in quickstart.log."""

    def __init__(self, log: logging.Logger, total: int):
        self.log, self.total = log, total
        self.records: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str, folder: str | None, what: str) -> Iterator[None]:
        n = len(self.records) + 1
        self.log.info(f"[{n}/{self.total}] {name}: {what}")
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.records.append({"stage": name, "folder": folder, "seconds": round(seconds, 1), "what": what})
        self.log.info(f"[{n}/{self.total}] {name}: done in {seconds:.0f} s")


LOGGER = "picodet_nas.quickstart"


def _num_classes(data: Path) -> int:
    from ..data import resolve_data

    return len(json.loads(resolve_data(data).train_ann.read_text())["categories"])


def run_quickstart(cfg: QuickstartConfig, run_dir: Path, *, compare: bool = False) -> dict[str, Any]:
    """Run every stage into `run_dir` (an empty folder) and write report.md; returns the summary
    (also written as summary.json)."""
    import torch

    log = open_run_log(LOGGER, run_dir / LOG_FILE, console_prefix="quickstart ")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    try:
        atomic_write_text(run_dir / "config.yaml", dump(cfg.document()))
        summary = _pipeline(cfg, run_dir, log, compare)
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
        write_report(run_dir / REPORT_FILE, summary)
        log.info(f"done in {summary['total_seconds']:.0f} s: {run_dir / REPORT_FILE}")
        return summary
    finally:
        torch.set_num_threads(threads)
        close_run_log(LOGGER)


def _pipeline(cfg: QuickstartConfig, run_dir: Path, log: logging.Logger, compare: bool = False) -> dict[str, Any]:
    import torch
    from evolution.search import EvolveConfig, run_evolve
    from supernet.train import SUPERNET_FILE, train_supernet

    from ..arch import load_arch_file, save_arch
    from ..data import make_shapes_dataset
    from ..engine.eval_checkpoint import evaluate_checkpoint
    from ..engine.finalize import METRICS_FILE, MODEL_FILE
    from ..engine.retrain import retrain
    from ..latency import default_table_name, profile_device, write_table
    from ..latency.run_bundle import device_info
    from ..space import load_space
    from .cmd_evolve import evolve_settings
    from .cmd_profile_device import _ProgressBars, plan_settings
    from .cmd_retrain import initial_weights

    seed = cfg.seed
    space = load_space(cfg.space)
    stages = _Stages(log, total=7 if compare else 6)
    machine = device_info()
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "run_dir": str(run_dir), "config": cfg.to_dict(),
        "machine": {"cpu_model": machine["cpu_model"], "cpu_count": machine["cpu_count"], "os": machine["os"],
                    "torch_threads": torch.get_num_threads()},
        "stages": stages.records,
    }

    data = run_dir / "data"
    ds = cfg.dataset
    with stages.stage("data", "data", f"generated shapes: {ds['train']} training and {ds['val']} validation "
                      f"images of {ds['image_size']} px"):
        make_shapes_dataset(data, seed=seed, **cfg.dataset)
    num_classes = _num_classes(data)
    summary["dataset"] = {"path": "data", "num_classes": num_classes, **cfg.dataset}

    sn_options = {**cfg.supernet, "seed": seed}
    with stages.stage("supernet", "supernet", f"one-shot training of the {space.name} supernet "
                      f"({sn_options.get('epochs')} epoch(s))"):
        sn = train_supernet(cfg.space, data, options=sn_options, out=str(run_dir / "supernet"))
        curves = plot_supernet_curves(run_dir / "supernet" / "metrics.csv", run_dir / "supernet" / "curves.png")
    summary["supernet"] = {"checkpoint": f"supernet/{SUPERNET_FILE}", "epochs": sn["epochs"], "metrics": sn["metrics"],
                           "train_seconds": round(sn["wall_time_s"], 1), "curves": str(curves.relative_to(run_dir))}

    plan = plan_settings({**cfg.profile, "num_classes": num_classes, "seed": seed})
    name = default_table_name(machine["device"], "onnxruntime", plan["threads"], space.name,
                              plan["input_sizes"] or space.input_sizes, space.input_sizes)
    with stages.stage("profile", "latency", f"latency table of this machine for {space.name} (ONNX Runtime)"):
        table = profile_device(space, name=name, progress=_ProgressBars(), **plan)
        table_path, table_png = write_table(table, run_dir / "latency" / f"{name}.json")
    val, rng = table["validation"], table["range_ms"]
    summary["latency"] = {"table": str(table_path.relative_to(run_dir)), "plot": str(table_png.relative_to(run_dir)),
                          "fastest_ms": rng["fastest"], "slowest_ms": rng["slowest"],
                          "validation": {k: val.get(k) for k in ("subnets", "mape", "within_5pct", "within_10pct",
                                                                 "kendall_tau")},
                          "threads": table["meta"]["threads"], "repeats": table["meta"]["repeats"]}

    fraction, given = float(cfg.budget["fraction"]), cfg.budget["ms"]
    budget = float(given) if given is not None else choose_budget(rng, fraction)
    how = ("given" if given is not None else
           f"{100 * fraction:.0f}% of the way from the fastest to the slowest predicted subnet")
    log.info(f"latency budget: {budget:g} ms ({how}; the space spans {rng['fastest']:.3f} to {rng['slowest']:.3f} ms "
             f"predicted)")
    summary["budget"] = {"ms": budget, "how": how, "fraction": None if given is not None else fraction}

    evolve_cfg = EvolveConfig(supernet=str(run_dir / "supernet" / SUPERNET_FILE), latency_table=str(table_path),
                              latency_budget=f"{budget}ms", data=str(data), seed=seed, out=str(run_dir / "evolve"),
                              **evolve_settings(cfg.evolve))
    with stages.stage("evolve", "evolve", f"evolutionary search under {budget:g} ms "
                      f"({evolve_cfg.generations} generations of {evolve_cfg.population})"):
        result = run_evolve(evolve_cfg, progress=True)
    log.info(result.summary)
    best_yaml = result.run_dir / "best.yaml"
    _, best_doc = load_arch_file(best_yaml)
    summary["evolve"] = {"best_yaml": str(best_yaml.relative_to(run_dir)), "pareto": "evolve/pareto.png",
                         "candidates": result.candidates, "generations": result.generations,
                         "arch": best_doc["arch"], "scores": best_doc["scores"]}
    if best_doc.get("lead_check"):
        summary["evolve"]["lead_check"] = best_doc["lead_check"]
    if (result.run_dir / "pareto.csv").is_file() and cfg.evolve.get("references", True) is not False:
        summary["evolve"]["pareto_check"] = pareto_check(space, result.run_dir / "pareto.csv")

    retrain_options = {**{k: v for k, v in cfg.retrain.items() if k != "init"}, "seed": seed}
    init_kind = cfg.retrain["init"] or "scratch"
    with stages.stage("retrain", "retrain", f"retraining the winner ({init_kind} init, "
                      f"{retrain_options.get('epochs')} epoch(s)), export to ONNX, latency measured as the table was"):
        init = initial_weights({"init": init_kind}, str(best_yaml))
        metrics = retrain(str(best_yaml), str(data), options=retrain_options, out=str(run_dir / "retrain"), init=init)
    if "measured_latency_ms" in metrics:
        from ..latency.anchors import describe, drift_note

        log.info(f"measured {metrics['measured_latency_ms']:.3f} ms{describe(metrics)}")
        drift = drift_note(metrics)
        if drift:
            log.info(f"note: {drift}")
    summary["retrain"] = {"metrics": f"retrain/{METRICS_FILE}", "model": f"retrain/{MODEL_FILE}",
                          "onnx": "retrain/model.onnx", **{k: metrics.get(k) for k in (
                              "coco", "params", "flops", "epochs", "wall_time_s", "init", "predicted_latency_ms",
                              "measured_latency_ms", "latency_ratio", "machine_speed", "anchored_latency_ratio",
                              "latency_budget_ms", "budget_met")}}

    with stages.stage("eval", "eval", "COCO evaluation of the final model.pt (as nas eval)"):
        evaluated = evaluate_checkpoint(str(best_yaml), run_dir / "retrain" / MODEL_FILE, str(data),
                                        out=str(run_dir / "eval"), workers=0,
                                        device=retrain_options["device"] or "auto")
    summary["eval"] = {"metrics": f"eval/{METRICS_FILE}", "coco": evaluated["coco"]}

    if compare:
        reference = comparison_reference(space, run_dir / "evolve" / "pareto.csv",
                                         float(best_doc["scores"]["predicted_latency_ms"]))
        ref_yaml = run_dir / "evolve" / "reference.yaml"
        save_arch(reference["arch"], ref_yaml)
        with stages.stage("compare", "compare", f"retraining the uniform-width reference {reference['label']} alike"):
            init = initial_weights({"init": init_kind, "supernet": str(run_dir / "supernet" / SUPERNET_FILE)},
                                   str(ref_yaml))
            ref_metrics = retrain(str(ref_yaml), str(data), options=retrain_options, out=str(run_dir / "compare"),
                                  init=init)
        summary["compare"] = {"label": reference["label"], "arch": reference["arch"].to_dict(),
                              "supernet_map": reference["map"], "predicted_latency_ms": reference["latency_ms"],
                              "coco": ref_metrics["coco"], "metrics": f"compare/{METRICS_FILE}"}
    return summary


def _pareto_rows(pareto_csv: Path) -> list[dict[str, str]]:
    import csv

    with pareto_csv.open() as f:
        return list(csv.DictReader(f))


def uniform_references(space, rows: list[dict[str, str]], source: Path) -> list[dict[str, Any]]:
    """The uniform-width references the search scored (pareto.csv `rows` of role 'reference';
    every uniform width at every input size of the space): arch, supernet mAP, predicted
    latency, label."""
    by_key = {a.replace(input_size=size).key(): a.replace(input_size=size)
              for a in space.uniform_archs() for size in space.input_sizes}
    refs = []
    for r in rows:
        if r["role"] == "reference" and r["arch_key"] in by_key:
            arch = by_key[r["arch_key"]]
            refs.append({"arch": arch, "map": float(r["map"]), "latency_ms": float(r["predicted_latency_ms"]),
                         "label": f"uniform {arch.channel_ratio[0]:g} at {arch.input_size} px"})
    if not refs:
        raise UserError(f"{source}: the search scored no uniform-width reference to compare with")
    return refs


def near(refs: list[dict[str, Any]], latency_ms: float, tolerance: float = 0.15) -> list[dict[str, Any]]:
    """The references within `tolerance` (relative) of `latency_ms`, predicted."""
    return [r for r in refs if abs(r["latency_ms"] - latency_ms) <= tolerance * latency_ms]


def pareto_check(space, pareto_csv: Path, tolerance: float = 0.15) -> dict[str, Any]:
    """Does the supernet score the chosen subnet above every uniform-width reference within
    `tolerance` of its predicted latency (slower ones included)? The search's own claim on its
    Pareto plot, from pareto.csv's scores (all of one scoring: the same images, the same BN)."""
    rows = _pareto_rows(pareto_csv)
    chosen = next(r for r in rows if r["chosen"] == "1")
    winner_map, latency = float(chosen["map"]), float(chosen["predicted_latency_ms"])
    refs = uniform_references(space, rows, pareto_csv)
    itself = next((r["label"] for r in refs if r["arch"].key() == chosen["arch_key"]), None)
    close = [r for r in near(refs, latency, tolerance) if r["arch"].key() != chosen["arch_key"]]
    return {"tolerance": tolerance, "winner_map": winner_map, "winner_predicted_latency_ms": latency,
            "winner_is_reference": itself,  # the search chose a hand-designed network (its label)
            "references": [{"label": r["label"], "map": r["map"], "predicted_latency_ms": r["latency_ms"]}
                           for r in sorted(close, key=lambda r: r["latency_ms"])],
            "winner_above_all": itself is None and all(winner_map > r["map"] for r in close)}


def comparison_reference(space, pareto_csv: Path, latency_ms: float, tolerance: float = 0.15) -> dict[str, Any]:
    """The uniform-width reference the search's winner is compared with: among the references of
    the search (pareto.csv) within `tolerance` of its predicted latency, the one the supernet
    scored highest; the nearest in latency when none is that close."""
    rows = _pareto_rows(pareto_csv)
    chosen = {r["arch_key"] for r in rows if r["chosen"] == "1"}
    every = uniform_references(space, rows, pareto_csv)
    refs = [r for r in every if r["arch"].key() not in chosen] or every  # not the winner, unless it is all
    close = near(refs, latency_ms, tolerance)
    return (max(close, key=lambda r: r["map"]) if close
            else min(refs, key=lambda r: abs(r["latency_ms"] - latency_ms)))
