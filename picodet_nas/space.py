"""Search spaces: which `Arch` fields are searched, over which choices, and what is fixed.

A space file (`search_spaces/*.yaml`)::

    name: picodet_s_joint
    description: ...
    base:                    # a complete Arch: every field not searched is taken from here
      scale: 0.75
      channel_ratio: [0.875, 0.5, ...]
      neck_channels: 96
      head_convs: 2
      input_size: 320
    choices:                 # the searched dimensions
      channel_ratio: [0.5, 0.625, 0.75, 0.875, 1.0]   # per block: 13 genes
      kernel_size: [3, 5]                              # per block: 13 genes
      neck_channels: [64, 96, 128]
      head_convs: [1, 2, 3, 4]
      input_size: [256, 288, 320, 352, 416]

A genome is the tuple of the chosen value of every gene, in `genes` order. Every space has a
fingerprint (a hash of its canonical form) that checkpoints, latency tables and search
results record, so that mixing files of different spaces is an error, never a silent mistake.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .arch import NUM_BLOCKS, Arch
from .errors import ArchError, SpaceError, did_you_mean
from .utils.io import read_yaml

PER_BLOCK_DIMS = ("channel_ratio", "kernel_size")
GLOBAL_DIMS = ("neck_channels", "head_convs", "input_size")
DIMENSIONS = PER_BLOCK_DIMS + GLOBAL_DIMS
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


@dataclass(frozen=True)
class Gene:
    name: str  # e.g. "channel_ratio.4" or "neck_channels"
    dim: str
    block: int | None
    choices: tuple[Any, ...]


class SearchSpace:
    def __init__(self, name: str, base: Arch, choices: Mapping[str, Sequence[Any]], description: str = "",
                 source: str = "space"):
        self.name = name
        self.description = description
        self.base = base
        self.choices: dict[str, tuple[Any, ...]] = {}
        for dim in DIMENSIONS:  # canonical order
            if dim in choices:
                self.choices[dim] = tuple(sorted(choices[dim]))
        self.source = source
        self._check()

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Any, source: str = "space") -> "SearchSpace":
        if not isinstance(doc, Mapping):
            raise SpaceError(f"{source}: expected a mapping with keys name, base, choices")
        unknown = sorted(set(doc) - {"name", "description", "base", "choices"})
        if unknown:
            raise SpaceError(f"{source}: unknown key {unknown[0]!r} (expected name, description, base, choices)")
        for key in ("name", "base", "choices"):
            if key not in doc:
                raise SpaceError(f"{source}: missing field {key!r}")
        if not isinstance(doc["name"], str) or not doc["name"]:
            raise SpaceError(f"{source}: name must be a non-empty string")
        try:
            base = Arch.from_dict(doc["base"], source=f"{source}: base")
        except ArchError as e:
            raise SpaceError(str(e)) from None
        choices = doc["choices"]
        if not isinstance(choices, Mapping) or not choices:
            raise SpaceError(f"{source}: choices must be a non-empty mapping of dimension -> list of values")
        for dim, values in choices.items():
            if dim not in DIMENSIONS:
                raise SpaceError(f"{source}: unknown dimension {dim!r} in choices (known: {', '.join(DIMENSIONS)})")
            if not isinstance(values, list) or not values:
                raise SpaceError(f"{source}: choices.{dim} must be a non-empty list")
            if len(set(values)) != len(values):
                raise SpaceError(f"{source}: choices.{dim} has duplicate values")
        return cls(doc["name"], base, choices, str(doc.get("description", "")), source)

    def _check(self) -> None:
        """Every choice must give a valid Arch: try each value of each dimension on the base."""
        for dim, values in self.choices.items():
            for v in values:
                try:
                    if dim in PER_BLOCK_DIMS:
                        self.base.replace(**{dim: (v,) * NUM_BLOCKS})
                    else:
                        self.base.replace(**{dim: v})
                except (ArchError, TypeError) as e:
                    raise SpaceError(f"{self.source}: choice {v!r} of {dim} is out of range ({e})") from None

    # ---- identity -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "base": self.base.to_dict(),
            "choices": {k: list(v) for k, v in self.choices.items()},
        }

    @cached_property
    def fingerprint(self) -> str:
        """Hash of what defines the space (base and choices; not its name or description)."""
        canon = json.dumps({"base": self.base.to_dict(), "choices": {k: list(v) for k, v in self.choices.items()}},
                           sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def ref(self) -> dict[str, str]:
        return {"name": self.name, "fingerprint": self.fingerprint}

    def check_fingerprint(self, fingerprint: str | None, what: str) -> None:
        if fingerprint != self.fingerprint:
            raise SpaceError(
                f"{what} belongs to another search space (fingerprint {fingerprint}, "
                f"space {self.name!r} has {self.fingerprint})"
            )

    # ---- genes ----------------------------------------------------------------------
    @cached_property
    def genes(self) -> tuple[Gene, ...]:
        genes = []
        for dim, values in self.choices.items():
            if dim in PER_BLOCK_DIMS:
                genes += [Gene(f"{dim}.{i}", dim, i, values) for i in range(NUM_BLOCKS)]
            else:
                genes.append(Gene(dim, dim, None, values))
        return tuple(genes)

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return self.choices.get("input_size", (self.base.input_size,))

    @property
    def size(self) -> int:
        return math.prod(len(g.choices) for g in self.genes)

    def decode(self, genome: Sequence[Any]) -> Arch:
        if len(genome) != len(self.genes):
            raise SpaceError(f"genome has {len(genome)} genes, space {self.name!r} has {len(self.genes)}")
        fields: dict[str, Any] = {d: list(getattr(self.base, d)) for d in PER_BLOCK_DIMS}
        for gene, value in zip(self.genes, genome):
            if value not in gene.choices:
                raise SpaceError(f"{gene.name}={value!r} is not a choice of space {self.name!r} {list(gene.choices)}")
            if gene.block is None:
                fields[gene.dim] = value
            else:
                fields[gene.dim][gene.block] = value
        return self.base.replace(**{k: tuple(v) if k in PER_BLOCK_DIMS else v for k, v in fields.items()})

    def encode(self, arch: Arch) -> tuple[Any, ...]:
        """The genome of `arch`; a SpaceError if `arch` is not in this space."""
        for dim in DIMENSIONS:
            if dim not in self.choices and getattr(arch, dim) != getattr(self.base, dim):
                raise SpaceError(f"architecture has {dim}={getattr(arch, dim)!r}, space {self.name!r} fixes it to "
                                 f"{getattr(self.base, dim)!r}")
        if arch.scale != self.base.scale:
            raise SpaceError(f"architecture has scale {arch.scale}, space {self.name!r} has {self.base.scale}")
        genome = []
        for gene in self.genes:
            value = getattr(arch, gene.dim) if gene.block is None else getattr(arch, gene.dim)[gene.block]
            if value not in gene.choices:
                raise SpaceError(f"architecture has {gene.name}={value!r}, not a choice of space {self.name!r} "
                                 f"{list(gene.choices)}")
            genome.append(value)
        return tuple(genome)

    def contains(self, arch: Arch) -> bool:
        try:
            self.encode(arch)
            return True
        except SpaceError:
            return False

    # ---- sampling and landmarks -----------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        return self.decode([rng.choice(g.choices) for g in self.genes])

    def largest(self) -> Arch:
        """The supernet: the largest choice of every gene."""
        return self.decode([max(g.choices) for g in self.genes])

    def smallest(self) -> Arch:
        return self.decode([min(g.choices) for g in self.genes])

    def uniform(self, ratio: float, **fixed: Any) -> Arch:
        """Every block at `ratio`, other searched genes at their value in `fixed` or the base
        value when it is a choice, else the largest choice."""
        genome = []
        for g in self.genes:
            if g.dim == "channel_ratio":
                genome.append(ratio)
                continue
            want = fixed.get(g.dim, getattr(self.base, g.dim) if g.block is None else getattr(self.base, g.dim)[g.block])
            genome.append(want if want in g.choices else max(g.choices))
        return self.decode(genome)

    def uniform_archs(self) -> Iterator[Arch]:
        """The uniform-width references of the space (one per channel-ratio choice)."""
        for r in self.choices.get("channel_ratio", (None,)):
            yield self.uniform(r) if r is not None else self.base


_REGISTERED: dict[str, Path] = {}


def register_space(name: str, path: str | Path) -> Path:
    """Make the space file `path` known by `name`, beside the files of `search_spaces/` (where a
    shipped space needs nothing more than its file). A name is registered once."""
    if name in list_spaces():
        raise SpaceError(f"search space {name!r} is already registered")
    _REGISTERED[name] = Path(path)
    return _REGISTERED[name]


def list_spaces(pattern: str = "*") -> list[str]:
    """The names of the known search spaces (`search_spaces/*.yaml` and registered ones) that
    match a shell-style `pattern`, sorted."""
    shipped = {q.stem for q in SPACES_DIR.glob("*.yaml")} if SPACES_DIR.is_dir() else set()
    return sorted(fnmatch.filter(shipped | set(_REGISTERED), pattern))


def resolve_space_path(spec: str | Path) -> Path:
    """The file of a space given by name or by path."""
    if str(spec) in _REGISTERED:
        return _REGISTERED[str(spec)]
    p = Path(spec)
    if p.suffix.lower() in (".yaml", ".yml") or p.exists():
        return p
    candidate = SPACES_DIR / f"{spec}.yaml"
    if candidate.is_file():
        return candidate
    known = list_spaces()
    raise SpaceError(f"unknown search space {str(spec)!r}{did_you_mean(str(spec), known, list_known=False)}: "
                     f"expected a YAML file or one of {', '.join(known) or 'none'}")


def load_space(spec: str | Path) -> SearchSpace:
    """A space by name (`esnet_s`, from `search_spaces/`) or by path."""
    path = resolve_space_path(spec)
    return SearchSpace.from_dict(read_yaml(path, "search space", SpaceError), source=str(path))
