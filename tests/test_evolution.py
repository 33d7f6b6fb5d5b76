"""`nas evolve`: budgets, the latency constraint, scoring, history, resume, Ray workers, outputs.

Everything runs on the toy space (`tests/toy_search.py`: scale 0.25, 96-128 px), a supernet with
random weights, an analytic latency table built with the latency package's own builder, and 16
train / 8 val generated shapes images, scoring each candidate on 8 calibration and 8 held-out
images (about 0.5 s a candidate on one thread). The reference run (`baseline`, in this
process, no Ray) is shared by the tests that compare against it: 3 generations of 4.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from evolution.budget import parse_budget
from evolution.history import SearchHistory, Scored
from evolution.operators import Constraint, FeasibleSampler, GenomeSpace
from evolution.proposers import GAProposer, NSGA2Proposer
from evolution.search import run_evolve
from evolution.settings import EvolveConfig
from toy_search import TOY_SPACE, make_toy_inputs, save_toy_supernet, synthetic_table, toy_supernet
from picodet_nas.arch import load_arch_file
from picodet_nas.data import make_shapes_dataset
from picodet_nas.cli.main import main
from picodet_nas.errors import UserError
from picodet_nas.latency import LatencyPredictor
from picodet_nas.latency.table import save_table
from picodet_nas.space import SearchSpace

BUDGET = "4ms"  # the toy space spans 2.03-6.39 ms: about half of the random subnets fit
SMALL = dict(population=4, parents=2, mutations=2, crossovers=2, generations=3, calib_images=8, val_images=8,
             batch_size=8, seed=0)


def cli_args(toy, out: Path, *extra: str, budget: str = BUDGET) -> list[str]:
    return ["evolve", "--supernet", str(toy.supernet), "--latency-table", str(toy.table), "--latency-budget", budget,
            "--data", str(toy.data), "--population", "4", "--parents", "2", "--mutations", "2", "--crossovers", "2",
            "--generations", "3", "--calib-images", "8", "--val-images", "8", "--batch-size", "8", "--seed", "0",
            "--workers", "0", "--out", str(out), "--no-progress", *extra]


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def study_of(run_dir: Path) -> optuna.Study:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return optuna.load_study(study_name=config["study_name"], storage=f"sqlite:///{run_dir / 'history.db'}")


def candidate_sequence(run_dir: Path) -> list[tuple[int, int, str, float]]:
    """(generation, order, arch key, mAP) of every candidate in proposal order, from the database."""
    trials = study_of(run_dir).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    rows = [(t.user_attrs["generation"], t.user_attrs["order"], t.user_attrs["arch_key"], t.values[0])
            for t in trials if t.user_attrs["role"] == "candidate"]
    return sorted(rows)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_inputs(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def predictor(toy) -> LatencyPredictor:
    return LatencyPredictor.from_file(toy.table)


@pytest.fixture(scope="module")
def baseline(toy, tmp_path_factory):
    """The uninterrupted reference search: in this process (`--workers 0`), references scored."""
    out = tmp_path_factory.mktemp("runs") / "baseline"
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget=BUDGET,
                       data=str(toy.data), workers=0, out=str(out), **SMALL)
    return run_evolve(cfg, progress=False)


# ---------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("text, ms", [("17ms", 17.0), ("17 ms", 17.0), ("17", 17.0), ("0.017s", 17.0),
                                      (" 17ms ", 17.0), ("17.5ms", 17.5), ("0.0175s", 17.5), (".5ms", 0.5),
                                      ("17.0", 17.0), (17, 17.0), (2.5, 2.5)])
def test_budget_spellings(text, ms):
    assert parse_budget(text) == ms


@pytest.mark.parametrize("text", ["17us", "17 msec", "ms", "", "fast", "-5ms", "0", "0s", "17m", "17 m s", "inf",
                                  "nan", "1e999ms", "17ms17", "seventeen"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(UserError, match="--latency-budget"):
        parse_budget(text)


def test_unparseable_budget_exits_2_with_one_line(toy, tmp_path, capsys):
    assert main(cli_args(toy, tmp_path / "run", budget="17 parsecs")) == 2
    assert "--latency-budget '17 parsecs'" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_budget_below_the_fastest_subnet_states_the_fastest(toy, predictor, tmp_path, capsys):
    assert main(cli_args(toy, tmp_path / "run", budget="0.0015s")) == 2
    line = one_line_error(capsys)
    assert "below the fastest subnet" in line and f"{predictor.fastest_ms:.3f} ms" in line, line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- mismatched inputs
@pytest.fixture(scope="module")
def other_space(tmp_path_factory):
    """Files of another space (one more neck width): a different fingerprint."""
    doc = {**TOY_SPACE, "name": "toy-wider", "choices": {**TOY_SPACE["choices"], "neck_channels": [16, 24, 32]}}
    space = SearchSpace.from_dict(doc)
    root = tmp_path_factory.mktemp("other")
    table = root / "table.json"
    save_table(synthetic_table(space, 6, name="other"), table)
    return {"table": table, "supernet": save_toy_supernet(toy_supernet(space), root / "supernet.pt")}


@pytest.mark.parametrize("swap", ["table", "supernet"])
def test_files_of_another_space_exit_2_with_one_line(toy, other_space, swap, tmp_path, capsys):
    args = cli_args(toy, tmp_path / "run")
    flag = "--latency-table" if swap == "table" else "--supernet"
    args[args.index(flag) + 1] = str(other_space[swap])
    assert main(args) == 2
    line = one_line_error(capsys)
    assert "same space" in line and "toy" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("table_precision, search_precision", [("int8", "fp32"), ("fp32", "int8")])
def test_a_table_of_another_precision_than_the_search_exits_2(toy, tmp_path, capsys, table_precision,
                                                               search_precision):
    """An INT8 table given to a float search, or a float table to an INT8 search: one line."""
    doc = json.loads(Path(toy.table).read_text())
    doc["meta"]["precision"] = table_precision
    table = tmp_path / "table.json"
    table.write_text(json.dumps(doc))
    args = cli_args(toy, tmp_path / "run", "--precision", search_precision)
    args[args.index("--latency-table") + 1] = str(table)
    assert main(args) == 2
    line = one_line_error(capsys)
    assert f"times {table_precision} models but the search is for {search_precision}" in line, line
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_that_is_no_supernet_exits_2(toy, tmp_path, capsys):
    import torch

    from picodet_nas.checkpoint import load_checkpoint

    ckpt = load_checkpoint(toy.supernet)
    ckpt["meta"] = {**ckpt["meta"], "kind": "model"}
    torch.save(ckpt, tmp_path / "model.pt")
    args = cli_args(toy, tmp_path / "run")
    args[args.index("--supernet") + 1] = str(tmp_path / "model.pt")
    assert main(args) == 2
    assert "not a supernet" in one_line_error(capsys)


def test_bad_data_exits_2_and_leaves_no_run_directory(toy, tmp_path, capsys):
    args = cli_args(toy, tmp_path / "run")
    args[args.index("--data") + 1] = str(tmp_path / "no-such-data")
    assert main(args) == 2
    assert "data folder not found" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_the_best_candidates_are_rescored_on_the_whole_search_split(toy, tmp_path, capsys):
    """Candidates scored on 4 of the supernet's 8 held-out training images; the best 3 are scored again on
    all 8 and best.yaml is the best of those by the new score (the lead check off: tests/test_lead.py)."""
    out = tmp_path / "rescore"
    assert main(cli_args(toy, out, "--val-images", "4", "--rescore-top", "3", "--min-lead-z", "0")) == 0
    again = json.loads((out / "rescored.json").read_text())
    assert again["images"] == 8 and len(again["scores"]) == 3
    arch, doc = load_arch_file(out / "best.yaml")
    chosen = max(again["scores"].items(), key=lambda kv: kv[1]["map"])
    assert doc["scores"]["rescore_images"] == 8 and doc["scores"]["rescore_map"] == chosen[1]["map"]
    if list(again["scores"].values()).count(chosen[1]) == 1:
        assert arch.key() == chosen[0]
    val = json.loads((out / "data" / "val_rescore.json").read_text())
    held = torch.load(toy.supernet, weights_only=True)["meta"]["search_split"]["held_out_ids"]
    assert sorted(img["id"] for img in val["images"]) == sorted(held)
    calib = json.loads((out / "data" / "calib.json").read_text())
    calib_ids = {img["id"] for img in calib["images"]}
    assert calib_ids.isdisjoint(held)  # calibration images come from the supernet's training part...
    assert calib["annotations"] and {a["image_id"] for a in calib["annotations"]} <= calib_ids  # ...boxes kept for the crops
    assert "re-scored on 8 search-split images" in capsys.readouterr().out


def test_data_without_the_supernets_held_out_images_exits_2(toy, tmp_path, capsys):
    small = make_shapes_dataset(tmp_path / "small", train=2, val=2, image_size=64, seed=3)
    args = cli_args(toy, tmp_path / "run")
    args[args.index("--data") + 1] = str(small)
    assert main(args) == 2
    line = one_line_error(capsys)
    assert "held-out images recorded in" in line and str(toy.supernet) in line


def test_an_unreachable_ray_address_exits_2_at_once(toy, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray already runs in this process; the search would use it")
    args = cli_args(toy, tmp_path / "run", "--workers", "1", "--address", "127.0.0.1:1")
    started = time.monotonic()
    assert main(args) == 2
    assert "nothing answers there" in one_line_error(capsys) and time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- operators (no scoring)
def fake_history(genomes: GenomeSpace, constraint: Constraint, n: int, generation: int = 0) -> list[Scored]:
    """`n` feasible candidates with made-up, distinct scores."""
    sampler = FeasibleSampler(genomes, constraint)
    rng, seen, out = random.Random(1), set(), []
    for i in range(n):
        arch = sampler.sample(rng, seen)
        seen.add(arch.key())
        out.append(Scored(arch=arch, key=arch.key(), map=rng.random(), map50=0.0,
                          predicted_latency_ms=constraint.latency(arch), params=1, flops=1.0, role="candidate",
                          generation=generation, order=i, origin="random", worker="", attempts=1, scored_at="",
                          score_seconds=0.0, reused_from=None, trial_number=i))
    return out


@pytest.mark.parametrize("strategy", ["ga", "nsga2"])
def test_proposals_are_feasible_new_and_a_function_of_seed_and_generation(predictor, strategy):
    genomes = GenomeSpace(predictor.space, predictor.input_sizes)
    constraint = Constraint(predictor, 4.0)
    earlier = fake_history(genomes, constraint, 12)

    def make(seed):
        if strategy == "ga":
            return GAProposer(genomes, constraint, population=10, parents=4, mutations=5, crossovers=5,
                              mutation_prob=0.1, seed=seed)
        return NSGA2Proposer(genomes, constraint, population=10, mutation_prob=0.1, seed=seed)

    first = make(0).propose(1, earlier)
    assert len(first) == 10
    assert [a.key() for a in make(0).propose(1, earlier).archs] == [a.key() for a in first.archs]  # same inputs, same
    assert [a.key() for a in make(1).propose(1, earlier).archs] != [a.key() for a in first.archs]  # another seed
    keys = [a.key() for a in first.archs]
    assert len(set(keys)) == len(keys) and not set(keys) & {r.key for r in earlier}
    assert all(constraint.feasible(a) for a in first.archs)
    if strategy == "ga":
        assert first.counts() == {"mutation": 5, "crossover": 5}


@pytest.mark.parametrize("strategy", ["ga", "nsga2"])
def test_generation_0_starts_from_the_seeds_that_meet_the_budget(predictor, strategy):
    """The uniform-width networks (`--seed-uniform`, the default) come first in generation 0, those
    within the budget only and at most `population` of them; later generations do not repeat them."""
    from evolution.proposers import make_proposer
    from evolution.search import reference_archs

    genomes = GenomeSpace(predictor.space, predictor.input_sizes)
    seeds = reference_archs(genomes)
    latencies = sorted(predictor.predict(a) for a in seeds)
    budget = (latencies[1] + latencies[2]) / 2  # two of them meet it
    constraint = Constraint(predictor, budget)
    make = lambda population, given: make_proposer(strategy, genomes, constraint, population=population, parents=2,  # noqa: E731
                                                   mutations=2, crossovers=2, mutation_prob=0.1, seed=0, seeds=given)
    first = make(6, seeds).propose(0, [])
    fitting = [a for a in seeds if predictor.predict(a) <= budget]
    assert len(fitting) == 2 and first.archs[:2] == fitting and first.origins[:2] == ["seed", "seed"]
    assert first.counts()["seed"] == 2 and len(first) == 6 and all(constraint.feasible(a) for a in first.archs)
    assert make(1, seeds).propose(0, []).archs == fitting[:1]  # never more than the population
    assert "seed" not in make(6, ()).propose(0, []).counts()  # --no-seed-uniform: all random
    assert "seed" not in make(6, seeds).propose(1, fake_history(genomes, constraint, 4)).counts()


def test_a_search_recorded_before_seeding_existed_resumes_unseeded(tmp_path):
    """A config.yaml without `seed_uniform` (searches before the option) resumes without seeds
    when the flag is not given, and refuses --no-seed-uniform's opposite only when asked."""
    from evolution.settings import EvolveConfig, check_resume, resolved_config

    for name in ("s.pt", "t.json"):
        (tmp_path / name).write_text("x")
    cfg = EvolveConfig(supernet=str(tmp_path / "s.pt"), latency_table=str(tmp_path / "t.json"),
                       latency_budget="2ms", data=str(tmp_path))
    space = SearchSpace.from_dict(TOY_SPACE)
    fresh = resolved_config(cfg, 2.0, space, tmp_path, None)
    assert fresh["seed_uniform"] is True  # a new search is seeded
    old = {k: v for k, v in fresh.items() if k != "seed_uniform"}
    resumed = resolved_config(cfg, 2.0, space, tmp_path, old)
    assert resumed["seed_uniform"] is False
    check_resume(old, resumed, tmp_path / "config.yaml")  # no refusal
    forced = resolved_config(dataclasses.replace(cfg, seed_uniform=True), 2.0, space, tmp_path, old)
    with pytest.raises(UserError, match="seeding generation 0"):
        check_resume(old, forced, tmp_path / "config.yaml")


def test_a_tight_budget_still_gives_feasible_samples(predictor):
    """Just above the fastest subnet, uniform draws are almost never feasible: the repair walk
    toward the fastest subnet must still deliver distinct feasible architectures."""
    genomes = GenomeSpace(predictor.space, predictor.input_sizes)
    constraint = Constraint(predictor, predictor.fastest_ms * 1.08)
    sampler = FeasibleSampler(genomes, constraint, tries=50)
    rng, seen = random.Random(0), set()
    for _ in range(10):
        arch = sampler.sample(rng, seen)
        assert arch is not None and constraint.feasible(arch) and arch.key() not in seen
        seen.add(arch.key())


def test_mutants_identical_to_their_parents_are_replaced_by_random_samples(predictor):
    genomes = GenomeSpace(predictor.space, predictor.input_sizes)
    constraint = Constraint(predictor, 4.0)
    earlier = fake_history(genomes, constraint, 6)
    proposal = GAProposer(genomes, constraint, population=6, parents=3, mutations=4, crossovers=0, mutation_prob=0.0,
                          seed=0).propose(1, earlier)
    assert proposal.counts() == {"random": 6}


# ---------------------------------------------------------------------------- a whole search
def test_every_candidate_meets_the_budget_and_nothing_is_scored_twice(baseline, predictor):
    study = study_of(baseline.run_dir)
    trials = study.get_trials()
    assert trials and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    candidates = [t for t in trials if t.user_attrs["role"] == "candidate"]
    assert len(candidates) == 12 and baseline.candidates == 12
    for t in candidates:
        arch = SearchSpace.from_dict(TOY_SPACE).decode([t.params[g.name] for g in predictor.space.genes])
        assert t.user_attrs["predicted_latency_ms"] == t.values[1] == predictor.predict(arch) <= 4.0
        assert t.constraints["latency_ms"] <= 0
    keys = [t.user_attrs["arch_key"] for t in trials if "reused_from" not in t.user_attrs]
    assert len(keys) == len(set(keys)), "an architecture was scored twice"
    assert baseline.scored_now == len(keys)


def test_outputs_follow_the_contract(baseline, toy):
    run = baseline.run_dir
    arch, doc = load_arch_file(run / "best.yaml")
    assert {"arch", "space", "provenance", "scores"} <= set(doc)
    assert doc["space"] == SearchSpace.from_dict(TOY_SPACE).ref()
    assert {"supernet", "latency_table", "budget_ms", "seed", "strategy"} <= set(doc["provenance"])
    assert doc["provenance"]["budget_ms"] == 4.0 and doc["provenance"]["strategy"] == "ga"
    assert Path(doc["provenance"]["supernet"]) == toy.supernet.resolve()
    assert set(doc["scores"]) == {"map", "predicted_latency_ms", "params", "flops"}
    assert arch == baseline.best.arch and doc["scores"]["map"] == baseline.best.map
    assert doc["scores"]["predicted_latency_ms"] <= 4.0 and doc["scores"]["params"] > 0 and doc["scores"]["flops"] > 0

    import csv

    rows = list(csv.DictReader(open(run / "pareto.csv")))
    assert {"map", "predicted_latency_ms", "on_front", "chosen", "role", "generation", "arch_key"} <= set(rows[0])
    cands = [r for r in rows if r["role"] == "candidate"]
    assert len(cands) == 12 and sum(int(r["chosen"]) for r in rows) == 1 and any(int(r["on_front"]) for r in cands)
    assert [r for r in rows if int(r["chosen"])][0]["arch_key"] == arch.key()
    assert [r for r in rows if r["role"] == "reference"], "the uniform-width references were not scored"
    gens = list(csv.DictReader(open(run / "generations.csv")))
    assert [int(g["generation"]) for g in gens] == [0, 1, 2]
    assert all(float(g["best_map"]) >= float(g["mean_map"]) for g in gens)
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "evolve.log").read_text().count("scored candidate") == 12
    assert study_of(run).directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]


def test_the_cli_prints_a_one_line_summary_and_refuses_to_reuse_a_run(baseline, toy, capsys):
    rc = main(cli_args(toy, baseline.run_dir))  # a new search into a finished run's folder
    assert rc == 2 and "--resume" in one_line_error(capsys)
    rc = main(cli_args(toy, baseline.run_dir, "--resume", "--seed", "1"))  # resuming with another seed
    assert rc == 2 and "seed" in one_line_error(capsys)
    assert main(cli_args(toy, baseline.run_dir, "--resume")) == 0  # nothing left: looked up, not scored
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("best: mAP") and "0 scored now" in out[0]


def test_sigkill_mid_generation_then_resume_loses_nothing_and_ends_like_an_uninterrupted_run(baseline, toy,
                                                                                              tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "picodet_nas.cli.main", *cli_args(toy, run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db, done = run / "history.db", 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as con:
                        done = con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
                except sqlite3.OperationalError:  # tables not created yet
                    done = 0
                if done >= 5:  # generation 0 (4) and one of generation 1
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    assert 5 <= done < 12, f"not killed mid-search ({done} scored)"
    before = {t.user_attrs["arch_key"]: (t.number, t.values) for t in study_of(run).get_trials()
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) >= 5
    zombie = study_of(run).ask()  # an ask without a tell, as an interrupted optuna writer leaves it

    assert main(cli_args(toy, run, "--resume")) == 0
    trials = study_of(run).get_trials()
    by_number = {t.number: t for t in trials}
    for key, (number, values) in before.items():  # every score from before the kill is kept, unchanged
        assert by_number[number].state == optuna.trial.TrialState.COMPLETE and by_number[number].values == values
    assert by_number[zombie.number].state == optuna.trial.TrialState.FAIL
    scored = [t.user_attrs["arch_key"] for t in trials
              if t.state == optuna.trial.TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    assert len(scored) == len(set(scored)), "an architecture was scored twice"
    assert candidate_sequence(run) == candidate_sequence(baseline.run_dir)
    resumed, uninterrupted = (yaml.safe_load((r / "best.yaml").read_text()) for r in (run, baseline.run_dir))
    assert resumed["arch"] == uninterrupted["arch"] and resumed["scores"] == uninterrupted["scores"]
    assert "resuming" in (run / "evolve.log").read_text()


# ---------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray instance for the module's Ray searches (they reuse it, as in a notebook)."""
    ray = pytest.importorskip("ray")
    import tempfile

    temp = tempfile.mkdtemp(prefix="nas-ray-test-", dir="/tmp")
    # one logical GPU (no device behind it): Ray schedules GPU shares without touching CUDA
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


def _descendants_titled(prefix: str) -> list[int]:
    """Pids of this process's descendants whose title (cmdline) starts with `prefix`."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith(prefix):
                continue
            pid = int(entry.name)
            while pid > 1:
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent pid
                if pid == me:
                    found.append(int(entry.name))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


class WorkerKiller(threading.Thread):
    """SIGKILLs the first Ray scorer process seen busy scoring (`ray::EvolveScorer.score`)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            busy = _descendants_titled("ray::EvolveScorer.score")
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                self.killed = busy[0]
            time.sleep(0.02)


def ray_search(toy, out: Path, workers: int):
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget=BUDGET,
                       data=str(toy.data), workers=workers, out=str(out), references=False, **SMALL)
    return run_evolve(cfg, progress=False)


def test_two_ray_workers_give_the_same_search_and_a_killed_worker_loses_nothing(ray_session, baseline, toy,
                                                                                tmp_path):
    killer = WorkerKiller()
    killer.start()
    try:
        result = ray_search(toy, tmp_path / "ray2", workers=2)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no Ray worker was seen scoring"
    assert candidate_sequence(result.run_dir) == candidate_sequence(baseline.run_dir)
    assert result.best.arch == baseline.best.arch and result.best.map == baseline.best.map
    trials = study_of(result.run_dir).get_trials()
    assert any(t.user_attrs["attempts"] == 2 for t in trials), "the killed worker's candidate was not retried"
    # Two processes took candidates: the killed one and at least one other. Which of them scored
    # the rest depends on how soon Ray brings the killed actor back, so the set of processes in the
    # history may hold the survivor alone.
    killed = f"{socket.gethostname()}:{killer.killed}"
    scored_by = {t.user_attrs["worker"] for t in trials}
    assert len(scored_by | {killed}) >= 2
    assert "died while scoring" in (result.run_dir / "evolve.log").read_text()


def test_one_ray_worker_gives_the_same_search(ray_session, baseline, toy, tmp_path):
    result = ray_search(toy, tmp_path / "ray1", workers=1)
    assert candidate_sequence(result.run_dir) == candidate_sequence(baseline.run_dir)
    assert result.best.arch == baseline.best.arch


def _scoring_inputs(toy, tmp_path):
    from evolution.data import prepare_subsets
    from picodet_nas.checkpoint import load_model_weights
    from picodet_nas.data import resolve_data

    state, meta = load_model_weights(toy.supernet)
    subsets = prepare_subsets(resolve_data(toy.data), tmp_path / "subsets", calib_images=8, val_images=8, seed=0,
                              batch_size=8, held_out_ids=meta["search_split"]["held_out_ids"])
    space = SearchSpace.from_dict(yaml.safe_load(toy.space.read_text()))
    archs = [space.largest(), space.smallest()]
    return state, meta, subsets, space, archs


def test_half_gpu_workers_share_one_gpu_and_read_no_files(ray_session, toy, tmp_path):
    """Two actors asking for 0.5 GPU each run side by side on the one (logical) GPU; given the
    driver's decoded images they score exactly as this process does, with the data files gone."""
    import logging
    import shutil

    from evolution.pools import RayPool, RaySession
    from evolution.scoring import CandidateScorer, NetworkScorer, ScoringData

    state, meta, subsets, space, archs = _scoring_inputs(toy, tmp_path)
    local = CandidateScorer(space.to_dict(), meta["num_classes"], state, subsets.data)
    expected = {a.key(): local.score(a)["map"] for a in archs}
    images = NetworkScorer(subsets.data).decoded_images(sorted({a.input_size for a in archs}))
    shutil.move(str(tmp_path / "subsets"), str(tmp_path / "moved"))  # the files the scoring data names are gone
    assert not Path(subsets.data.val_ann).exists()
    session = RaySession(None, 2, logging.getLogger("test"))
    pool = RayPool(session, workers=2, threads_per_worker=1, space_definition=space.to_dict(),
                   num_classes=meta["num_classes"], state=state, data=ScoringData(**subsets.data.to_dict()),
                   log=logging.getLogger("test"), images=images, device="cpu", gpus_per_worker=0.5)
    try:
        scored = {arch.key(): result["map"] for arch, result in pool.score(archs)}
        gpu_ids = ray_session.get([actor.gpu_ids.remote() for actor in pool.actors], timeout=60)
    finally:
        pool.close()
    assert scored == expected
    assert [[int(g) for g in ids] for ids in gpu_ids] == [[0], [0]]


@pytest.mark.parametrize("settings, message", [
    (dict(device="cpu", gpus_per_worker=0.5), "--gpus-per-worker 0.5 needs --device cuda"),
    (dict(device="tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    (dict(device="cuda", workers=2, gpus_per_worker=0.0), "needs --gpus-per-worker > 0"),
])
def test_bad_scoring_device_settings_are_one_line(toy, tmp_path, settings, message):
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget=BUDGET,
                       data=str(toy.data), out=str(tmp_path / "run"), **{**SMALL, **settings})
    with pytest.raises(UserError, match=re.escape(message)):
        run_evolve(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_cuda_in_this_process_without_a_gpu_is_refused(toy, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget=BUDGET,
                       data=str(toy.data), out=str(tmp_path / "run"), workers=0, device="cuda", **SMALL)
    with pytest.raises(UserError, match="this process sees no GPU"):
        run_evolve(cfg, progress=False)


# ---------------------------------------------------------------------------- nsga2
def test_nsga2_search_is_a_constrained_optuna_nsga2_study(toy, tmp_path):
    cfg = EvolveConfig(supernet=str(toy.supernet), latency_table=str(toy.table), latency_budget=BUDGET,
                       data=str(toy.data), workers=0, out=str(tmp_path / "nsga2"), strategy="nsga2",
                       references=False, **{**SMALL, "generations": 2})
    result = run_evolve(cfg, progress=False)
    trials = study_of(result.run_dir).get_trials()
    assert len(trials) == 8 and result.best.predicted_latency_ms <= 4.0
    assert sorted(t.system_attrs["NSGAIISampler:generation"] for t in trials) == [0] * 4 + [1] * 4
    assert all(t.constraints["latency_ms"] <= 0 for t in trials)
    # Generation 1 is what Optuna's NSGA-II breeds from generation 0 (resumable: a pure function of it).
    history = SearchHistory(f"sqlite:///{result.run_dir / 'history.db'}", study_of(result.run_dir).study_name,
                            GenomeSpace(SearchSpace.from_dict(TOY_SPACE), (96, 128)), resume=True)
    predictor = LatencyPredictor.from_file(toy.table)
    again = NSGA2Proposer(history.genomes, Constraint(predictor, 4.0), population=4, mutation_prob=0.1,
                          seed=0).propose(1, history.candidates(before=1))
    assert [a.key() for a in again.archs] == [r.key for r in history.candidates(generation=1)]
