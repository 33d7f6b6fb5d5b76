"""The named networks of the package, in one place: the architecture presets
(`arch.PRESETS`: picodet-s, -m, -l) and the search spaces (`search_spaces/*.yaml`).

    list_presets("picodet-*")     -> ["picodet-l", "picodet-m", "picodet-s"]
    list_spaces("*_joint")        -> ["picodet_l_joint", "picodet_m_joint", "picodet_s_joint"]
    get_preset("picodet-s")       -> Arch
    get_space("esnet_s")          -> SearchSpace
    register_preset(name, arch)   /  register_space(name, path)
    entries()                     -> every (kind, name), presets first

An unknown name is a one-line error naming the closest known one. The tests sweep `entries()`,
so a new preset or space file is built, trained a step, exported and (a space) checked
against its extracted subnets without a test of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from .arch import PRESETS, Arch, get_preset, list_presets, register_preset
from .space import SearchSpace, list_spaces, load_space, register_space

KINDS = ("preset", "space")

__all__ = ["KINDS", "PRESETS", "Entry", "entries", "get_preset", "get_space", "list_presets", "list_spaces",
           "register_preset", "register_space"]


@dataclass(frozen=True)
class Entry:
    kind: str  # "preset" or "space"
    name: str

    def load(self) -> Arch | SearchSpace:
        return get_preset(self.name) if self.kind == "preset" else get_space(self.name)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def get_space(name: str) -> SearchSpace:
    """The search space `name` (a registered name; `space.load_space` also takes paths)."""
    return load_space(name)


def entries(kind: str | None = None) -> list[Entry]:
    """Every registered preset and search space (or those of one `kind`), presets first."""
    if kind not in (None, *KINDS):
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or None, got {kind!r}")
    out: list[Entry] = []
    if kind in (None, "preset"):
        out += [Entry("preset", n) for n in list_presets()]
    if kind in (None, "space"):
        out += [Entry("space", n) for n in list_spaces()]
    return out

