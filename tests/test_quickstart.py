"""`nas quickstart`: the config file (shipped, merged, checked), the budget choice, the figures
and report, and the whole pipeline end to end on a tiny config (8 + 4 images, one epoch per
training, a partial latency table, two generations of four): about 20 s on one core."""

from __future__ import annotations

import json

import pytest
import yaml

from engine_helpers import load_json, nas, one_line_error, write
from picodet_nas.cli.quickstart_config import CONFIG_FILE, load_config
from picodet_nas.cli.quickstart_pipeline import choose_budget
from picodet_nas.cli.quickstart_report import plot_supernet_curves, write_report
from picodet_nas.errors import UserError

TINY_CONFIG = """\
threads: 1
dataset: {train: 20, val: 4, image_size: 64}
supernet: {epochs: 1, batch_size: 4, lr: 0.01, warmup_iters: 2, eval_interval: 1, calib_images: 4, log_interval: 1}
profile: {repeats: 2, warmup: 0, burst: 1, calibrate: 3, validate: 3, input_size: [160]}
evolve: {population: 4, parents: 2, mutations: 2, crossovers: 2, generations: 2, calib_images: 4, val_images: 4,
         batch_size: 4, workers: 0}
retrain: {epochs: 2, batch_size: 4, lr: 0.01, warmup_iters: 2, bn_freeze_epochs: 1, eval_interval: 1, log_interval: 1}
"""


def test_shipped_config_loads_and_override_merges(tmp_path):
    shipped = load_config()
    assert shipped.space == "quickstart" and shipped.seed == 0 and shipped.sources == (str(CONFIG_FILE),)
    assert shipped.budget["fraction"] == 0.4 and shipped.retrain["init"] == "supernet"
    merged = load_config(write(tmp_path / "o.yaml", "seed: 3\nsupernet: {epochs: 2}\nbudget: {ms: 2.5}\n"))
    assert merged.seed == 3 and merged.supernet["epochs"] == 2
    assert merged.supernet["batch_size"] == shipped.supernet["batch_size"]  # the rest of the section stays
    assert merged.budget == {"fraction": 0.4, "ms": 2.5}
    assert merged.supernet["strategy"] == "uniform" and merged.supernet["amp"] is None  # every option, resolved
    flagged = load_config(tmp_path / "o.yaml", {"seed": 5, "budget": {"ms": 1.5, "fraction": None}})
    assert flagged.seed == 5 and flagged.budget == {"fraction": 0.4, "ms": 1.5}  # flags over both files
    assert merged.sources[-1] == str(tmp_path / "o.yaml")


@pytest.mark.parametrize("text, needle", [
    ("colour: red\n", "unknown key 'colour'"),
    ("supernet: {epoch: 3}\n", "supernet: unknown key 'epoch' (did you mean 'epochs'?)"),
    ("supernet: {epochs: ten}\n", "supernet: epochs must be an integer, got 'ten'"),
    ("evolve: {latency_budget: 3}\n", "evolve: latency_budget is set by nas quickstart itself"),
    ("dataset: {seed: 4}\n", "dataset: seed is a shared key"),
    ("data: shapes\n", "nas quickstart generates its dataset"),
    ("budget: {fraction: 1.5}\n", "budget: fraction must be a number in [0, 1]"),
    ("budget: {ms: fast}\n", "budget: ms 'fast' is not a latency"),
    ("retrain: {init: imagenet}\n", "init must be scratch or supernet"),
    ("retrain: 5\n", "retrain must be a mapping"),
    ("seed: [1]\n", "seed must be an integer"),
    ("threads: 0\n", "threads must be a positive integer"),
    ("dataset: {train: [\n", "not valid YAML"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, needle):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path / "bad.yaml", text))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_budget_lies_between_the_fastest_and_the_slowest_subnet():
    rng = {"fastest": 1.0914, "slowest": 3.219}
    assert choose_budget(rng, 0.0) == 1.092 >= rng["fastest"]  # rounded up: the fastest subnet still fits
    assert choose_budget(rng, 1.0) == 3.219
    assert choose_budget(rng, 0.4) == pytest.approx(1.0914 + 0.4 * (3.219 - 1.0914), abs=1e-3)
    assert rng["fastest"] < choose_budget(rng, 0.4) < rng["slowest"]


def _summary() -> dict:
    coco = {k: 0.1 for k in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10", "AR100",
                             "AR_small", "AR_medium", "AR_large")}
    stages = [{"stage": s, "folder": s, "seconds": 10.0, "what": f"the {s} stage"}
              for s in ("data", "supernet", "profile", "evolve", "retrain", "eval")]
    return {
        "date": "2026-01-01 00:00:00", "run_dir": "run", "total_seconds": 61.0,
        "config": {"sources": ["quickstart.yaml"], "seed": 0},
        "machine": {"cpu_model": "a CPU", "cpu_count": 2, "os": "linux", "torch_threads": 1},
        "stages": stages,
        "supernet": {"checkpoint": "supernet/supernet.pt", "epochs": 2, "curves": "supernet/curves.png",
                     "metrics": {"largest_mAP": 0.2, "smallest_mAP": 0.1}},
        "latency": {"table": "latency/t.json", "plot": "latency/t.png", "fastest_ms": 1.0, "slowest_ms": 3.0,
                    "threads": 1, "repeats": 20,
                    "validation": {"subnets": 12, "mape": 0.02, "within_5pct": 0.9, "within_10pct": 1.0,
                                   "kendall_tau": 0.95}},
        "budget": {"ms": 1.8, "how": "40% of the way", "fraction": 0.4},
        "evolve": {"best_yaml": "evolve/best.yaml", "pareto": "evolve/pareto.png", "candidates": 48,
                   "generations": 3, "arch": {"scale": 0.5, "neck_channels": 48},
                   "scores": {"map": 0.05, "predicted_latency_ms": 1.7}},
        "retrain": {"coco": coco, "params": 500000, "flops": 1.2e8, "epochs": 20, "wall_time_s": 200.0,
                    "init": "supernet", "onnx": "retrain/model.onnx", "predicted_latency_ms": 1.7,
                    "measured_latency_ms": 1.75, "latency_ratio": 1.029, "latency_budget_ms": 1.8, "budget_met": True},
        "eval": {"metrics": "eval/metrics.json", "coco": coco},
    }


def test_report_holds_every_section_figure_and_number(tmp_path):
    text = write_report(tmp_path / "report.md", _summary()).read_text()
    for needle in ("## Stages", "| supernet | the supernet stage | `supernet/` | 10 s |", "**61 s**",
                   "![supernet training curves](supernet/curves.png)",
                   "![predicted vs measured latency](latency/t.png)",
                   "![Pareto front](evolve/pareto.png)", "Latency budget **1.8 ms** (40% of the way)",
                   "| measured latency | 1.750 ms |", "| predicted latency | 1.700 ms |", "| budget met | yes |",
                   "| measured / predicted | 1.029 |", "| mAP | 0.1000 |", "error is 2.0%"):
        assert needle in text, needle


def test_report_says_why_the_lead_check_returned_the_uniform_network(tmp_path):
    s = _summary()
    s["evolve"]["pareto_check"] = {"tolerance": 0.15, "winner_map": 0.05, "winner_predicted_latency_ms": 1.7,
                                   "winner_is_reference": "uniform 0.5 at 192 px", "references": [],
                                   "winner_above_all": False}
    s["evolve"]["lead_check"] = {"lead": 0.0017, "images": 96, "z": 1.37, "min_z": 2.0, "kept": False}
    s["retrain"].update(machine_speed=1.283, anchored_latency_ratio=1.042)
    text = write_report(tmp_path / "report.md", s).read_text()
    assert "led it by +0.0017 mAP on 96 search-split images, +1.37 standard errors" in text
    assert "below the lead check's 2" in text and "found no subnet" not in text
    assert "| 1.283 |" in text and "(anchored) | 1.042 |" in text


def test_supernet_curves_from_metrics_csv(tmp_path):
    rows = ["epoch,step,lr,loss,loss_vfl,loss_giou,loss_dfl,num_pos,img_per_s,epoch_time_s,wall_time_s,"
            "largest_mAP,largest_mAP50,smallest_mAP,smallest_mAP50"]
    rows += [f"{e},{10 * e},0.01,{3 - 0.1 * e},1,1,1,5,30,10,{10 * e}," + (",,," if e % 2 else "0.1,0.2,0.05,0.1")
             for e in range(1, 5)]
    png = plot_supernet_curves(write(tmp_path / "metrics.csv", "\n".join(rows) + "\n"), tmp_path / "c.png")
    assert png.stat().st_size > 10_000


def test_bad_quickstart_arguments_exit_2_before_anything_is_written(tmp_path):
    assert "is not a latency" in one_line_error(nas("quickstart", "--budget-ms", "fast", "--out", "run", cwd=tmp_path))
    write(tmp_path / "bad.yaml", "supernet: {epoch: 3}\n")
    assert "unknown key 'epoch'" in one_line_error(nas("quickstart", "--config", "bad.yaml", "--out", "run",
                                                       cwd=tmp_path))
    assert not (tmp_path / "run").exists()


def test_quickstart_end_to_end_on_a_tiny_config(tmp_path):
    write(tmp_path / "tiny.yaml", TINY_CONFIG)
    r = nas("quickstart", "--config", "tiny.yaml", "--out", "run", "--seed", "1", "--compare", cwd=tmp_path,
            timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    assert "latency budget:" in r.stderr and "report.md" in r.stderr
    for path in ("config.yaml", "quickstart.log", "report.md", "summary.json",
                 "data/annotations/instances_train.json",
                 "supernet/supernet.pt", "supernet/metrics.csv", "supernet/curves.png",
                 "evolve/best.yaml", "evolve/pareto.png", "evolve/pareto.csv",
                 "retrain/model.pt", "retrain/model.onnx", "retrain/metrics.json", "eval/metrics.json"):
        assert (run / path).is_file(), path
    tables = sorted((run / "latency").glob("*.json"))
    assert len(tables) == 1 and tables[0].with_suffix(".png").is_file()
    summary = load_json(run / "summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["data", "supernet", "profile", "evolve", "retrain", "eval",
                                                       "compare"]
    assert summary["config"]["seed"] == 1
    budget = summary["budget"]["ms"]
    assert summary["latency"]["fastest_ms"] <= budget <= summary["latency"]["slowest_ms"]
    best = yaml.safe_load((run / "evolve" / "best.yaml").read_text())
    assert best["provenance"]["budget_ms"] == budget and best["scores"]["predicted_latency_ms"] <= budget
    metrics = load_json(run / "retrain" / "metrics.json")
    assert metrics["init"] == "supernet" and metrics["latency_budget_ms"] == budget
    assert metrics["measured_latency_ms"] > 0 and isinstance(metrics["budget_met"], bool)
    assert metrics["latency_measurement"]["repeats"] == 2  # timed as the quickstart's table was
    assert load_json(run / "eval" / "metrics.json")["coco"] == metrics["coco"]  # nas eval agrees with the retrain
    report = (run / "report.md").read_text()
    for figure in ("supernet/curves.png", tables[0].with_suffix(".png").relative_to(run).as_posix(),
                   "evolve/pareto.png"):
        assert f"]({figure})" in report and (run / figure).is_file()
    assert json.loads((run / "summary.json").read_text())["total_seconds"] > 0
    # the search scored on the supernet's held-out training images; no image is also a validation image
    files = {name: {img["file_name"] for img in load_json(run / path)["images"]} for name, path in (
        ("held", "supernet/data/search.json"), ("trained", "supernet/data/supernet_train.json"),
        ("scored", "evolve/data/val.json"), ("val", "data/annotations/instances_val.json"))}
    assert files["scored"] <= files["held"] and not files["held"] & files["trained"]
    assert not (files["held"] | files["scored"]) & files["val"]
    assert "scored on the search split" in report
    # --compare: the uniform-width reference retrained alike, beside the winner
    compared = summary["compare"]
    assert (run / "compare" / "metrics.json").is_file() and compared["label"].startswith("uniform ")
    assert load_json(run / "compare" / "metrics.json")["coco"] == compared["coco"]
    assert "## Searched vs uniform width" in report and compared["label"] in report
    assert "retrained alike: mAP" in r.stdout
    # the Pareto check: the chosen subnet's supernet score against the uniform references near it
    check = summary["evolve"]["pareto_check"]
    assert check["winner_map"] == pytest.approx(best["scores"]["map"])
    assert check["winner_above_all"] == (check["winner_is_reference"] is None and all(
        check["winner_map"] > r["map"] for r in check["references"]))
    lead = summary["evolve"].get("lead_check")
    if check["winner_is_reference"] and lead is not None and not lead["kept"]:
        assert "The search returned a uniform-width network" in report and "below the lead check's" in report
    elif check["winner_is_reference"]:
        assert "The search chose a uniform-width network itself" in report
    elif check["references"]:
        assert "Uniform-width references within 15%" in report and check["references"][0]["label"] in report
    else:
        assert "No uniform-width reference lies within" in report


def test_pareto_check_compares_the_chosen_subnet_with_uniform_references_near_it(tmp_path):
    """A hand-made pareto.csv: the references within 15% of the chosen subnet's predicted latency
    (slower ones too) are compared with it; references further away are not."""
    from picodet_nas.cli.quickstart_pipeline import comparison_reference, pareto_check
    from picodet_nas.space import load_space

    space = load_space("quickstart")
    u = {(r, size): space.uniform(r).replace(input_size=size).key() for r in (0.5, 1.0) for size in (160, 224)}
    head = "role,generation,order,origin,map,map50,predicted_latency_ms,params,flops,on_front,chosen,worker,attempts,trial,arch_key"
    rows = [("candidate", 0.30, 2.00, 1, "s0.5|mine"), ("candidate", 0.40, 2.60, 0, "s0.5|other"),
            ("reference", 0.25, 1.90, 0, u[0.5, 160]), ("reference", 0.29, 2.25, 0, u[1.0, 160]),
            ("reference", 0.50, 2.40, 0, u[0.5, 224]), ("reference", 0.60, 3.00, 0, u[1.0, 224])]
    csv = tmp_path / "pareto.csv"
    csv.write_text(head + "\n" + "\n".join(f'{role},0,0,random,{m},0,{ms},1,1,0,{c},w,1,0,"{key}"'
                                           for role, m, ms, c, key in rows) + "\n")
    check = pareto_check(space, csv)
    assert [r["label"] for r in check["references"]] == ["uniform 0.5 at 160 px", "uniform 1 at 160 px"]
    assert check["winner_map"] == 0.30 and check["winner_above_all"] is True
    assert comparison_reference(space, csv, 2.00)["label"] == "uniform 1 at 160 px"  # the best of the near ones
    assert pareto_check(space, csv, tolerance=0.25)["winner_above_all"] is False  # 2.40 ms at 0.50 is near now
    # the search returned a uniform network itself: it is not its own reference, and the check says so
    rows[0] = ("candidate", 0.29, 2.25, 1, u[1.0, 160])
    csv.write_text(head + "\n" + "\n".join(f'{role},0,0,random,{m},0,{ms},1,1,0,{c},w,1,0,"{key}"'
                                           for role, m, ms, c, key in rows) + "\n")
    check = pareto_check(space, csv)
    assert check["winner_is_reference"] == "uniform 1 at 160 px" and check["winner_above_all"] is False
    assert [r["label"] for r in check["references"]] == ["uniform 0.5 at 224 px"]  # 2.40 ms; not itself
    assert comparison_reference(space, csv, 2.25)["label"] != "uniform 1 at 160 px"
