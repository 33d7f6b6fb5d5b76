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

Every stage runs exactly what its command runs, with the small settings of one file
(`picodet_nas/configs/quickstart.yaml`, optionally overridden by `--config`), so the commands'
own defaults stay the published real-scale ones. This module lives in the CLI package because
it is the one place allowed to see picodet_nas, supernet and evolution together.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from ..errors import UserError
from ..utils.io import atomic_write_json, atomic_write_text, read_config_yaml

CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
SECTIONS = ("dataset", "supernet", "profile", "budget", "evolve", "retrain")
TOP_KEYS = ("seed", "space", "threads", *SECTIONS)
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
LOG_FILE = "quickstart.log"


# ---- the config file -----------------------------------------------------------------------
def allowed_keys() -> dict[str, set[str]]:
    """The keys each section may hold: the options of the stage's command that the pipeline
    does not set itself (paths, the space, the number of classes, the seed: one seed for all)."""
    from evolution.search import EvolveConfig

    from ..data import make_shapes_dataset
    from .cmd_retrain import TRAIN_OPTIONS

    train = set(TRAIN_OPTIONS) - {"seed"}
    return {
        "dataset": set(inspect.signature(make_shapes_dataset).parameters) - {"out_dir", "overwrite", "seed"},
        "supernet": train | {"strategy", "num_random", "search_fraction", "distill"},
        "profile": {"threads", "repeats", "warmup", "burst", "calibrate", "validate", "statistic", "clock",
                    "allow_spinning", "input_sizes"},
        "budget": {"fraction", "ms"},
        "evolve": {f for f in EvolveConfig.__dataclass_fields__}
                  - {"supernet", "latency_table", "latency_budget", "data", "seed", "resume", "out", "name", "storage"},
        "retrain": train | {"init"},
    }


@dataclass(frozen=True)
class QuickstartConfig:
    seed: int
    space: str
    threads: int | None
    dataset: dict[str, Any]
    supernet: dict[str, Any]
    profile: dict[str, Any]
    budget: dict[str, Any]
    evolve: dict[str, Any]
    retrain: dict[str, Any]
    sources: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


def _read_config(path: Path) -> dict[str, Any]:
    doc = read_config_yaml(path)
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping with the keys {', '.join(TOP_KEYS)}")
    allowed = allowed_keys()
    for key, value in doc.items():
        if key not in TOP_KEYS:
            raise UserError(f"{path}: unknown key {key!r} (known: {', '.join(TOP_KEYS)})")
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"{path}: {key} must be a mapping of option: value")
            for option in value:
                if str(option).replace("-", "_") not in allowed[key]:
                    known = ", ".join(sorted(allowed[key]))
                    raise UserError(f"{path}: {key}: unknown option {option!r} (known: {known})")
    return {k: ({str(o).replace("-", "_"): v for o, v in doc[k].items()} if k in SECTIONS else doc[k]) for k in doc}


def load_config(override: str | Path | None = None) -> QuickstartConfig:
    """The shipped config, with `override`'s keys merged over it section by section."""
    doc = _read_config(CONFIG_FILE)
    sources = [str(CONFIG_FILE)]
    if override is not None:
        for key, value in _read_config(Path(override)).items():
            doc[key] = {**doc.get(key, {}), **value} if key in SECTIONS else value
        sources.append(str(override))
    where = " / ".join(sources)
    seed, threads = doc.get("seed", 0), doc.get("threads")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"{where}: seed must be an integer >= 0, got {seed!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise UserError(f"{where}: threads must be a positive integer or null, got {threads!r}")
    budget = doc.get("budget", {})
    fraction = budget.get("fraction", 0.4)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise UserError(f"{where}: budget: fraction must be a number in [0, 1], got {fraction!r}")
    ms = budget.get("ms")
    if ms is not None and (not isinstance(ms, (int, float)) or isinstance(ms, bool) or not ms > 0):
        raise UserError(f"{where}: budget: ms must be a positive number of milliseconds or null, got {ms!r}")
    if doc.get("retrain", {}).get("init", "scratch") not in ("scratch", "supernet"):
        raise UserError(f"{where}: retrain: init must be scratch or supernet, got {doc['retrain']['init']!r}")
    return QuickstartConfig(seed=seed, space=str(doc.get("space", "quickstart")), threads=threads,
                            sources=tuple(sources), **{k: dict(doc.get(k, {})) for k in SECTIONS})


# ---- the budget ----------------------------------------------------------------------------
def choose_budget(range_ms: Mapping[str, Any], fraction: float) -> float:
    """The latency budget `fraction` of the way from the fastest to the slowest predicted
    subnet of the table, rounded up to the microsecond (so that fraction 0 still admits the
    fastest subnet). The middle of the range is where a search has something to choose: near
    the fastest end only the narrowest networks fit, near the slowest end everything does."""
    fastest, slowest = float(range_ms["fastest"]), float(range_ms["slowest"])
    return math.ceil((fastest + fraction * (slowest - fastest)) * 1000 - 1e-6) / 1000


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


def _logger(run_dir: Path) -> tuple[logging.Logger, list[logging.Handler]]:
    log = logging.getLogger("picodet_nas.quickstart")
    log.setLevel(logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("quickstart %(message)s"))
    file_handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handlers = [console, file_handler]
    for h in handlers:
        log.addHandler(h)
    return log, handlers


def _num_classes(data: Path) -> int:
    doc = json.loads((data / "annotations" / "instances_train.json").read_text())
    return len(doc["categories"])


def run_quickstart(cfg: QuickstartConfig, run_dir: Path, *, budget_ms: float | None = None,
                   compare: bool = False) -> dict[str, Any]:
    """Run every stage into `run_dir` (an empty folder) and write report.md; returns the summary
    (also written as summary.json)."""
    import torch

    log, handlers = _logger(run_dir)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    try:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        summary = _pipeline(cfg, run_dir, budget_ms, log, compare)
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
        write_report(run_dir / REPORT_FILE, summary)
        log.info(f"done in {summary['total_seconds']:.0f} s: {run_dir / REPORT_FILE}")
        return summary
    finally:
        torch.set_num_threads(threads)
        for h in handlers:
            logging.getLogger("picodet_nas.quickstart").removeHandler(h)
            h.close()


def _pipeline(cfg: QuickstartConfig, run_dir: Path, budget_ms: float | None, log: logging.Logger,
              compare: bool = False) -> dict[str, Any]:
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
    from .cmd_profile_device import _ProgressBars
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
    defaults = {k: p.default for k, p in inspect.signature(make_shapes_dataset).parameters.items()
                if p.default is not inspect.Parameter.empty}
    ds = {**defaults, **cfg.dataset}
    with stages.stage("data", "data", f"generated shapes: {ds['train']} training and {ds['val']} validation "
                      f"images of {ds['image_size']} px"):
        make_shapes_dataset(data, seed=seed, **cfg.dataset)
    num_classes = _num_classes(data)
    summary["dataset"] = {"path": "data", "num_classes": num_classes, **cfg.dataset}

    sn_options = {"device": "cpu", **cfg.supernet, "seed": seed}
    with stages.stage("supernet", "supernet", f"one-shot training of the {space.name} supernet "
                      f"({sn_options.get('epochs')} epoch(s))"):
        sn = train_supernet(cfg.space, data, options=sn_options, out=str(run_dir / "supernet"))
        curves = plot_supernet_curves(run_dir / "supernet" / "metrics.csv", run_dir / "supernet" / "curves.png")
    summary["supernet"] = {"checkpoint": f"supernet/{SUPERNET_FILE}", "epochs": sn["epochs"], "metrics": sn["metrics"],
                           "train_seconds": round(sn["wall_time_s"], 1), "curves": str(curves.relative_to(run_dir))}

    profile = {**cfg.profile}
    sizes = profile.pop("input_sizes", None)
    name = default_table_name(machine["device"], "onnxruntime", int(profile.get("threads", 1)), space.name,
                              sizes or space.input_sizes, space.input_sizes)
    with stages.stage("profile", "latency", f"latency table of this machine for {space.name} (ONNX Runtime)"):
        table = profile_device(space, name=name, input_sizes=sizes, num_classes=num_classes, seed=seed,
                               progress=_ProgressBars(), **profile)
        table_path, table_png = write_table(table, run_dir / "latency" / f"{name}.json")
    val, rng = table["validation"], table["range_ms"]
    summary["latency"] = {"table": str(table_path.relative_to(run_dir)), "plot": str(table_png.relative_to(run_dir)),
                          "fastest_ms": rng["fastest"], "slowest_ms": rng["slowest"],
                          "validation": {k: val.get(k) for k in ("subnets", "mape", "within_5pct", "within_10pct",
                                                                 "kendall_tau")},
                          "threads": table["meta"]["threads"], "repeats": table["meta"]["repeats"]}

    fraction = float(cfg.budget.get("fraction", 0.4))
    given = budget_ms if budget_ms is not None else cfg.budget.get("ms")
    budget = float(given) if given is not None else choose_budget(rng, fraction)
    how = ("given" if given is not None else
           f"{100 * fraction:.0f}% of the way from the fastest to the slowest predicted subnet")
    log.info(f"latency budget: {budget:g} ms ({how}; the space spans {rng['fastest']:.3f} to {rng['slowest']:.3f} ms "
             f"predicted)")
    summary["budget"] = {"ms": budget, "how": how, "fraction": None if given is not None else fraction}

    evolve_cfg = EvolveConfig(supernet=str(run_dir / "supernet" / SUPERNET_FILE), latency_table=str(table_path),
                              latency_budget=f"{budget}ms", data=str(data), seed=seed, out=str(run_dir / "evolve"),
                              **cfg.evolve)
    with stages.stage("evolve", "evolve", f"evolutionary search under {budget:g} ms "
                      f"({evolve_cfg.generations} generations of {evolve_cfg.population})"):
        result = run_evolve(evolve_cfg, progress=True)
    log.info(result.summary)
    best_yaml = result.run_dir / "best.yaml"
    _, best_doc = load_arch_file(best_yaml)
    summary["evolve"] = {"best_yaml": str(best_yaml.relative_to(run_dir)), "pareto": "evolve/pareto.png",
                         "candidates": result.candidates, "generations": result.generations,
                         "arch": best_doc["arch"], "scores": best_doc["scores"]}

    retrain_options = {"device": "cpu", **{k: v for k, v in cfg.retrain.items() if k != "init"}, "seed": seed}
    init_kind = cfg.retrain.get("init", "scratch")
    with stages.stage("retrain", "retrain", f"retraining the winner ({init_kind} init, "
                      f"{retrain_options.get('epochs')} epoch(s)), export to ONNX, latency measured as the table was"):
        init = initial_weights({"init": init_kind}, str(best_yaml))
        metrics = retrain(str(best_yaml), str(data), options=retrain_options, out=str(run_dir / "retrain"), init=init)
    summary["retrain"] = {"metrics": f"retrain/{METRICS_FILE}", "model": f"retrain/{MODEL_FILE}",
                          "onnx": "retrain/model.onnx", **{k: metrics.get(k) for k in (
                              "coco", "params", "flops", "epochs", "wall_time_s", "init", "predicted_latency_ms",
                              "measured_latency_ms", "latency_ratio", "latency_budget_ms", "budget_met")}}

    with stages.stage("eval", "eval", "COCO evaluation of the final model.pt (as nas eval)"):
        evaluated = evaluate_checkpoint(str(best_yaml), run_dir / "retrain" / MODEL_FILE, str(data),
                                        out=str(run_dir / "eval"), workers=0, device=retrain_options["device"])
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


def comparison_reference(space, pareto_csv: Path, latency_ms: float, tolerance: float = 0.15) -> dict[str, Any]:
    """The uniform-width reference the search's winner is compared with: among the references of
    the search (pareto.csv) within `tolerance` of its predicted latency, the one the supernet
    scored highest; the nearest in latency when none is that close."""
    import csv

    by_key = {a.replace(input_size=size).key(): a.replace(input_size=size)
              for a in space.uniform_archs() for size in space.input_sizes}
    refs = [r for r in csv.DictReader(pareto_csv.open()) if r["role"] == "reference" and r["arch_key"] in by_key]
    if not refs:
        raise UserError(f"{pareto_csv}: the search scored no uniform-width reference to compare with")
    near = [r for r in refs if abs(float(r["predicted_latency_ms"]) - latency_ms) <= tolerance * latency_ms]
    pick = (max(near, key=lambda r: float(r["map"])) if near
            else min(refs, key=lambda r: abs(float(r["predicted_latency_ms"]) - latency_ms)))
    arch = by_key[pick["arch_key"]]
    return {"arch": arch, "map": float(pick["map"]), "latency_ms": float(pick["predicted_latency_ms"]),
            "label": f"uniform {arch.channel_ratio[0]:g} at {arch.input_size} px"}


# ---- the report ----------------------------------------------------------------------------
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
