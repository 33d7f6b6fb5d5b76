"""The search history: every scored architecture, in an Optuna study in a real database.

One Optuna trial per scored candidate, written the moment its score arrives, as one
`study.add_trial` call: a single transaction that holds the genome (one categorical param per
gene), the values (mAP, predicted latency: the study's two directions, so optuna-dashboard
draws the Pareto front), the budget as a constraint (predicted latency - budget, <= 0 is
feasible) and user attributes (generation, arch, params, FLOPs, worker, time...). Because
there is no ask/tell pair, a kill leaves no half-written trial behind; trials that *other*
writers left RUNNING or WAITING (an interrupted ask/tell, optuna's own tools) are marked FAIL
when a search resumes, so they neither linger as zombies nor hand stale enqueued params to a
later `ask`.

The default storage is SQLite in the run directory (`history.db`); `--storage` takes any
SQLAlchemy URL Optuna supports (PostgreSQL, MySQL), which lets a dashboard or a notebook
read a search as it runs: `optuna-dashboard sqlite:///runs/evolve/<name>/history.db`.

The search owns its state (population, generation) and rebuilds it from this history on
resume: `candidates(before=g)` is everything generation `g` was proposed from, and
`lookup(key)` answers whether an architecture was already scored, so nothing is scored twice.
Roles: `candidate` (proposed by the search in a generation, always within the budget) and
`reference` (the space's uniform-width networks, scored for the Pareto plot only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from picodet_nas.arch import Arch
from picodet_nas.errors import UserError

from .operators import GenomeSpace

CANDIDATE = "candidate"
REFERENCE = "reference"
DIRECTIONS = ("maximize", "minimize")  # mAP, predicted latency (ms)
NSGA2_GENERATION_KEY = "NSGAIISampler:generation"  # Optuna's own key: the study reads as an NSGA-II run
CONSTRAINT = "latency_ms"


@dataclass(frozen=True)
class Scored:
    """One scored architecture as the history holds it."""

    arch: Arch
    key: str
    map: float
    map50: float
    predicted_latency_ms: float
    params: int
    flops: float
    role: str
    generation: int | None  # None for references
    order: int  # position in its generation's proposal (or in the reference list)
    origin: str  # mutation / crossover / random / nsga2 / reference
    worker: str
    attempts: int
    scored_at: str
    score_seconds: float
    reused_from: int | None  # trial number whose score this one reuses (no second scoring)
    trial_number: int

    def rank_key(self) -> tuple[float, float, str]:
        """Sort key, best first: higher mAP, then lower latency, then the arch key (a total order,
        so ties never depend on the order results arrived in)."""
        return (-self.map, self.predicted_latency_ms, self.key)


def load_optuna():
    """`optuna`, with its per-study and per-trial INFO lines turned off (a search makes
    thousands of trials and one in-memory study per NSGA-II generation)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(run_dir: str | Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'history.db').resolve()}"


def redacted(url: str) -> str:
    """A database URL without its password, for messages and config.yaml."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def _rdb_storage(url: str):
    optuna = load_optuna()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # a dashboard reading must not fail a write
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # SQLAlchemy's errors for a bad URL, driver or server, as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--storage {redacted(url)}: cannot open the database ({first[:200]})") from None


class SearchHistory:
    """The Optuna study of one search, with an in-memory index of its scored architectures."""

    def __init__(self, storage_url: str, study_name: str, genomes: GenomeSpace, *, resume: bool,
                 log: logging.Logger | None = None):
        optuna = load_optuna()
        self.genomes = genomes
        self.log = log or logging.getLogger("evolution")
        self.storage_url = storage_url
        self.study_name = study_name
        storage = _rdb_storage(storage_url)
        exists = study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
        if exists and not resume:
            raise UserError(f"study {study_name!r} already exists in {redacted(storage_url)}; pass --resume to "
                            f"continue it or --name for a new search")
        if resume and exists:
            self.study = optuna.load_study(study_name=study_name, storage=storage)
        else:
            if resume:
                self.log.warning("study %r is not in %s: the search starts from scratch", study_name,
                                 redacted(storage_url))
            self.study = optuna.create_study(study_name=study_name, storage=storage, directions=list(DIRECTIONS))
        self.distributions = {name: optuna.distributions.CategoricalDistribution(list(choices))
                              for name, choices in zip(genomes.names, genomes.choices)}
        self._records: list[Scored] = []
        self._scores: dict[str, Scored] = {}  # arch key -> the first trial that scored it
        self._candidate_keys: dict[str, Scored] = {}
        trials = self.study.get_trials(deepcopy=False)
        # Trial numbers are consecutive per study and this search is its only writer, so the
        # number of the next trial is known without reading the study back after each write.
        self._next_number = len(trials)
        for trial in trials:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                self._index(self._from_trial(trial))

    # ---- reading -------------------------------------------------------------------------
    def _from_trial(self, trial) -> Scored:
        attrs = trial.user_attrs
        try:
            arch = self.genomes.decode([trial.params[name] for name in self.genomes.names])
        except Exception as e:
            raise UserError(f"study {self.study_name!r}: trial {trial.number} does not decode to an architecture of "
                            f"this space ({e}); the study belongs to another search") from None
        return Scored(
            arch=arch, key=arch.key(), map=float(trial.values[0]), map50=float(attrs.get("map50", 0.0)),
            predicted_latency_ms=float(trial.values[1]), params=int(attrs.get("params", 0)),
            flops=float(attrs.get("flops", 0.0)), role=str(attrs.get("role", CANDIDATE)),
            generation=attrs.get("generation"), order=int(attrs.get("order", 0)),
            origin=str(attrs.get("origin", "")), worker=str(attrs.get("worker", "")),
            attempts=int(attrs.get("attempts", 1)), scored_at=str(attrs.get("scored_at", "")),
            score_seconds=float(attrs.get("score_seconds", 0.0)), reused_from=attrs.get("reused_from"),
            trial_number=trial.number)

    def _index(self, rec: Scored) -> None:
        self._records.append(rec)
        self._scores.setdefault(rec.key, rec)
        if rec.role == CANDIDATE:
            self._candidate_keys[rec.key] = rec

    def lookup(self, key: str) -> Scored | None:
        """The score of an architecture scored before (in any role), or None."""
        return self._scores.get(key)

    def candidates(self, before: int | None = None, generation: int | None = None) -> list[Scored]:
        """Candidates of generations `< before` (or of exactly `generation`), in proposal order."""
        out = [r for r in self._records if r.role == CANDIDATE
               and (before is None or r.generation < before) and (generation is None or r.generation == generation)]
        return sorted(out, key=lambda r: (r.generation, r.order))

    def references(self) -> list[Scored]:
        return sorted((r for r in self._records if r.role == REFERENCE), key=lambda r: r.order)

    def is_candidate(self, key: str) -> bool:
        return key in self._candidate_keys

    @property
    def num_scored(self) -> int:
        """Architectures actually scored (trials that reuse an earlier score not counted)."""
        return len(self._scores)

    # ---- writing -------------------------------------------------------------------------
    def add(self, arch: Arch, result: Mapping[str, Any], *, role: str, generation: int | None, order: int,
            origin: str, latency_ms: float, budget_ms: float, reused_from: int | None = None) -> Scored:
        """Record one scored architecture as one trial (one transaction) and return its record."""
        optuna = load_optuna()
        genome = self.genomes.encode(arch)
        user_attrs = {
            "role": role,
            "generation": generation,
            "order": order,
            "origin": origin,
            "arch_key": arch.key(),
            "arch": arch.to_dict(),
            "map": float(result["map"]),
            "map50": float(result.get("map50", 0.0)),
            "predicted_latency_ms": float(latency_ms),
            "params": int(result["params"]),
            "flops": float(result["flops"]),
            "worker": str(result.get("worker", "")),
            "attempts": int(result.get("attempts", 1)),
            "score_seconds": float(result.get("score_seconds", 0.0)),
            "scored_at": result.get("scored_at") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if reused_from is not None:
            user_attrs["reused_from"] = reused_from
        system_attrs = {NSGA2_GENERATION_KEY: generation} if generation is not None else {}
        trial = optuna.trial.create_trial(
            params=dict(zip(self.genomes.names, genome)), distributions=self.distributions,
            values=[float(result["map"]), float(latency_ms)], user_attrs=user_attrs, system_attrs=system_attrs,
            constraints={CONSTRAINT: float(latency_ms) - float(budget_ms)})
        self.study.add_trial(trial)
        number, self._next_number = self._next_number, self._next_number + 1
        rec = Scored(arch=arch, key=arch.key(), map=user_attrs["map"], map50=user_attrs["map50"],
                     predicted_latency_ms=float(latency_ms), params=user_attrs["params"], flops=user_attrs["flops"],
                     role=role, generation=generation, order=order, origin=origin, worker=user_attrs["worker"],
                     attempts=user_attrs["attempts"], scored_at=user_attrs["scored_at"],
                     score_seconds=user_attrs["score_seconds"], reused_from=reused_from, trial_number=number)
        self._index(rec)
        return rec

    def add_reused(self, arch: Arch, earlier: Scored, *, role: str, generation: int | None, order: int, origin: str,
                   budget_ms: float) -> Scored:
        """Record `arch` in a new role (a candidate that equals a reference scored earlier, ...)
        with the score it already has: looked up, never scored a second time."""
        result = {"map": earlier.map, "map50": earlier.map50, "params": earlier.params, "flops": earlier.flops,
                  "worker": earlier.worker, "attempts": 0, "score_seconds": 0.0}
        return self.add(arch, result, role=role, generation=generation, order=order, origin=origin,
                        latency_ms=earlier.predicted_latency_ms, budget_ms=budget_ms,
                        reused_from=earlier.trial_number)

    def fail_stale_trials(self) -> int:
        """Mark trials left RUNNING or WAITING by an interrupted writer as FAIL; their number.

        Only a resuming search calls this: it owns its study, so nothing else may still be
        working on those trials."""
        optuna = load_optuna()
        states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        stale = self.study.get_trials(deepcopy=False, states=states)
        storage = self.study._storage
        for trial in stale:
            storage.set_trial_user_attr(trial._trial_id, "failed_reason",
                                        f"left {trial.state.name} by an interrupted process; marked FAIL on resume")
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        return len(stale)

    # ---- study-level metadata --------------------------------------------------------------
    def set_metadata(self, values: Mapping[str, Any]) -> None:
        for k, v in values.items():
            self.study.set_user_attr(k, v)

    def metadata(self) -> dict[str, Any]:
        return dict(self.study.user_attrs)


def records_table(records: Iterable[Scored]) -> list[dict[str, Any]]:
    """Plain rows (for CSV and JSON) of records."""
    return [{"role": r.role, "generation": r.generation, "order": r.order, "origin": r.origin, "map": r.map,
             "map50": r.map50, "predicted_latency_ms": r.predicted_latency_ms, "params": r.params, "flops": r.flops,
             "worker": r.worker, "attempts": r.attempts, "trial": r.trial_number, "arch_key": r.key}
            for r in records]
