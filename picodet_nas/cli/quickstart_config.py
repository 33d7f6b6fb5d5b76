"""`nas quickstart`'s configuration: the shipped experiment file
(`picodet_nas/configs/quickstart.yaml`), a user's `--config FILE` merged over it section by
section, and the flags over both.

Both files are experiment files, read and checked by `config.read_experiment` like every
command's `-c FILE`, so each stage's section takes exactly its command's options: only those
the pipeline sets itself (paths, the data, the architecture to retrain) are refused. A resolved
section holds every option of the stage, with its command's default where no file gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .config import SECTIONS, catalog, read_experiment

CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
TOP_KEYS = ("seed", "space", "threads")
INITS = ("scratch", "supernet")

# Options of the stages' commands that the pipeline sets itself.
SET_BY_QUICKSTART: dict[str, tuple[str, ...]] = {
    "dataset": ("out",),
    "supernet": ("out", "name", "init"),
    "profile": ("num_classes", "backend", "device_name", "name", "out", "target_mape", "precision"),
    "budget": (),
    "evolve": ("supernet", "latency_table", "latency_budget", "out", "name", "storage", "precision"),
    "retrain": ("arch", "input_size", "supernet", "measure_latency", "sweep", "sweep_epochs", "sweep_threads",
                "address", "out", "name", "export_int8", "int8_calib_images"),
}


def section_keys(section: str) -> list[str]:
    """The options a section of the quick start may hold."""
    return [k for k in catalog().sections[section] if k not in SET_BY_QUICKSTART[section]]


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

    def document(self) -> dict[str, Any]:
        """The experiment-file form (`--print-config`, the run folder's config.yaml)."""
        return {"seed": self.seed, "space": self.space, "threads": self.threads,
                **{s: dict(getattr(self, s)) for s in SECTIONS}}

    def to_dict(self) -> dict[str, Any]:
        return {**self.document(), "sources": list(self.sources)}


def parse_ms(value: Any, where: str) -> float:
    """A latency budget as `nas evolve --latency-budget` reads it, in milliseconds."""
    from evolution.budget import parse_budget

    try:
        return parse_budget(value)
    except UserError as e:  # its message names nas evolve's flag
        raise UserError(str(e).replace("--latency-budget", where, 1)) from None


def read_file(path: str | Path) -> dict[str, Any]:
    """An experiment file checked for the quick start: every key known and of the right type,
    none that the pipeline sets itself; `budget: ms` in milliseconds."""
    doc = read_experiment(path)
    if "data" in doc:
        raise UserError(f"{path}: data: nas quickstart generates its dataset (the dataset: section); leave data out")
    for section in SECTIONS:
        for key in doc.get(section, {}):
            if key in SET_BY_QUICKSTART[section]:
                raise UserError(f"{path}: {section}: {key} is set by nas quickstart itself")
    if doc.get("budget", {}).get("ms") is not None:
        doc["budget"]["ms"] = parse_ms(doc["budget"]["ms"], f"{path}: budget: ms")
    return doc


def load_config(override: str | Path | None = None, flags: Mapping[str, Any] | None = None) -> QuickstartConfig:
    """The shipped config, `override`'s keys merged over it section by section, then `flags`
    (a document of the same shape; None values are flags not given)."""
    layers = [read_file(CONFIG_FILE)]
    sources = [str(CONFIG_FILE)]
    if override is not None:
        layers.append(read_file(override))
        sources.append(str(override))
    if flags:
        layers.append({k: ({o: x for o, x in v.items() if x is not None} if k in SECTIONS else v)
                       for k, v in flags.items() if v is not None})
    merged: dict[str, Any] = {s: {} for s in SECTIONS}
    for layer in layers:
        for key, value in layer.items():
            if key in SECTIONS:
                merged[key].update(value)
            else:
                merged[key] = value
    cat = catalog()
    top_defaults = cat.specs["quickstart"].defaults
    top = {k: merged[k] if merged.get(k) is not None else top_defaults[k] for k in TOP_KEYS}
    sections = {s: {k: merged[s][k] if merged[s].get(k) is not None else cat.defaults[s][k]
                    for k in section_keys(s)} for s in SECTIONS}
    where = " / ".join(sources)
    if top["seed"] < 0:
        raise UserError(f"{where}: seed must be an integer >= 0, got {top['seed']!r}")
    if top["threads"] is not None and top["threads"] < 1:
        raise UserError(f"{where}: threads must be a positive integer or null, got {top['threads']!r}")
    if sections["retrain"]["init"] not in (None, *INITS):
        raise UserError(f"{where}: retrain: init must be scratch or supernet, got {sections['retrain']['init']!r}")
    return QuickstartConfig(**top, **sections, sources=tuple(sources))
