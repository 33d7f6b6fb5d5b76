"""`Arch`: the one description of a PicoDet network.

Presets, search spaces, the supernet, the latency predictor, `best.yaml` and
`nas retrain` all speak it. It is immutable and hashable, so it can key caches
(the search never scores the same architecture twice) and be compared exactly.

Widths follow the legacy ESNet rules: stage output
widths are `make_divisible(base * scale, 16)` and each block's internal "mid" width is
`make_divisible(int(C_stage * channel_ratio[i]), 8)`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ArchError, did_you_mean
from .utils.io import read_yaml
from .utils.values import is_int, is_number

NUM_BLOCKS = 13
STAGE_REPEATS = (3, 7, 3)
STAGE_BASE_CHANNELS = (128, 256, 512)
STEM_CHANNELS = 24
STRIDES = (8, 16, 32, 64)
REG_MAX = 7
KERNEL_CHOICES = (3, 5, 7)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor`, never dropping below 90% of `v`."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stage_channels(scale: float) -> tuple[int, int, int]:
    """Output widths of the three ESNet stages (C3, C4, C5)."""
    return tuple(make_divisible(b * scale, 16) for b in STAGE_BASE_CHANNELS)  # type: ignore[return-value]


def block_stage(i: int) -> int:
    """Stage index (0, 1, 2) of block `i` (0..12)."""
    return 0 if i < 3 else (1 if i < 10 else 2)


def block_is_downsample(i: int) -> bool:
    """The first block of each stage has stride 2."""
    return i in (0, 3, 10)


@dataclass(frozen=True)
class Arch:
    """One PicoDet network.

    scale:          ESNet width multiplier (0.75 = S, 1.0 = M, 1.25 = L).
    channel_ratio:  13 per-block ratios in (0, 1]; they scale each block's mid width.
    kernel_size:    13 per-block depthwise kernel sizes (3 in the published models).
    neck_channels:  CSP-PAN width, also the head width (96 / 128 / 160 published).
    head_convs:     depthwise+pointwise repeats in each PicoHead tower (2 for S, 4 for M/L).
    input_size:     square network input in pixels (a multiple of 32).
    """

    scale: float
    channel_ratio: tuple[float, ...]
    neck_channels: int
    head_convs: int
    input_size: int = 320
    kernel_size: tuple[int, ...] = field(default=(3,) * NUM_BLOCKS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_ratio", tuple(float(r) for r in self.channel_ratio))
        object.__setattr__(self, "kernel_size", tuple(int(k) for k in self.kernel_size))
        _validate(self)

    # ---- derived widths -------------------------------------------------------------
    @property
    def stage_out_channels(self) -> tuple[int, int, int]:
        return stage_channels(self.scale)

    @property
    def mid_channels(self) -> tuple[int, ...]:
        """Internal width m_i of each of the 13 blocks."""
        c = self.stage_out_channels
        return tuple(
            make_divisible(int(c[block_stage(i)] * r), 8) for i, r in enumerate(self.channel_ratio)
        )

    # ---- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "channel_ratio": list(self.channel_ratio),
            "kernel_size": list(self.kernel_size),
            "neck_channels": self.neck_channels,
            "head_convs": self.head_convs,
            "input_size": self.input_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "arch") -> "Arch":
        if not isinstance(data, Mapping):
            raise ArchError(f"{source}: expected a mapping of architecture fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchError(
                f"{source}: unknown key {unknown[0]!r} (expected keys: {', '.join(sorted(known))})"
            )
        missing = [k for k in ("scale", "channel_ratio", "neck_channels", "head_convs") if k not in data]
        if missing:
            raise ArchError(f"{source}: missing key {missing[0]!r}")
        kwargs = dict(data)
        for key in ("channel_ratio", "kernel_size"):
            if key in kwargs:
                value = kwargs[key]
                if not isinstance(value, (list, tuple)):
                    raise ArchError(f"{source}: {key} must be a list of {NUM_BLOCKS} values, got {value!r}")
                kwargs[key] = tuple(value)
        try:
            return cls(**kwargs)
        except ArchError as e:
            raise ArchError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> "Arch":
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Canonical one-line string, stable across runs: for caches and de-duplication."""
        r = ",".join(f"{x:g}" for x in self.channel_ratio)
        k = "".join(str(x) for x in self.kernel_size)
        return f"s{self.scale:g}|r{r}|k{k}|n{self.neck_channels}|h{self.head_convs}|i{self.input_size}"

    def __str__(self) -> str:
        return self.key()


def _validate(a: Arch) -> None:
    if not is_number(a.scale, finite=True) or not 0.25 <= a.scale <= 4.0:
        raise ArchError(f"scale must be a number in [0.25, 4], got {a.scale!r}")
    if len(a.channel_ratio) != NUM_BLOCKS:
        raise ArchError(f"channel_ratio must have {NUM_BLOCKS} values (one per ESNet block), got {len(a.channel_ratio)}")
    for i, r in enumerate(a.channel_ratio):
        if not is_number(r, finite=True) or not 0.0 < r <= 1.0:
            raise ArchError(f"channel_ratio[{i}] must be in (0, 1], got {r!r}")
    if len(a.kernel_size) != NUM_BLOCKS:
        raise ArchError(f"kernel_size must have {NUM_BLOCKS} values (one per ESNet block), got {len(a.kernel_size)}")
    for i, k in enumerate(a.kernel_size):
        if k not in KERNEL_CHOICES:
            raise ArchError(f"kernel_size[{i}] must be one of {list(KERNEL_CHOICES)}, got {k!r}")
    if not is_int(a.neck_channels) or a.neck_channels < 8 or a.neck_channels % 8:
        raise ArchError(f"neck_channels must be a positive multiple of 8, got {a.neck_channels!r}")
    if not is_int(a.head_convs) or not 0 <= a.head_convs <= 8:
        raise ArchError(f"head_convs must be an integer in [0, 8], got {a.head_convs!r}")
    if not is_int(a.input_size) or a.input_size % 32 or not 64 <= a.input_size <= 2048:
        raise ArchError(f"input_size must be a multiple of 32 in [64, 2048], got {a.input_size!r}")


# ---- presets: the released legacy ESNet models ----
_S_RATIOS = (0.875, 0.5, 0.5, 0.5, 0.625, 0.5, 0.625, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5)
_ML_RATIOS = (0.875, 0.5, 1.0, 0.625, 0.5, 0.75, 0.625, 0.625, 0.5, 0.625, 1.0, 0.625, 0.75)

PRESETS: dict[str, Arch] = {
    "picodet-s": Arch(scale=0.75, channel_ratio=_S_RATIOS, neck_channels=96, head_convs=2, input_size=320),
    "picodet-m": Arch(scale=1.0, channel_ratio=_ML_RATIOS, neck_channels=128, head_convs=4, input_size=416),
    "picodet-l": Arch(scale=1.25, channel_ratio=_ML_RATIOS, neck_channels=160, head_convs=4, input_size=640),
}


def register_preset(name: str, arch: Arch) -> Arch:
    """Add a named architecture to the presets, where `resolve_arch`, the commands and the tests
    that sweep every preset find it. A name is registered once."""
    if not isinstance(arch, Arch):
        raise TypeError(f"register_preset({name!r}, ...): expected an Arch, got {type(arch).__name__}")
    if name in PRESETS:
        raise ArchError(f"preset {name!r} is already registered")
    PRESETS[name] = arch
    return arch


def list_presets(pattern: str = "*") -> list[str]:
    """The preset names matching a shell-style `pattern`, sorted."""
    return sorted(fnmatch.filter(PRESETS, pattern))


def get_preset(name: str) -> Arch:
    """The preset `name`; an unknown name is an `ArchError` naming the closest preset."""
    if name not in PRESETS:
        raise ArchError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}")
    return PRESETS[name]


def load_arch_file(path: str | Path) -> tuple[Arch, dict[str, Any]]:
    """Read an architecture YAML: either a bare `Arch` mapping or a file with a top-level
    `arch:` key (such as `best.yaml`). Returns the Arch and the whole document."""
    path = Path(path)
    doc = read_yaml(path, "architecture file", ArchError)
    if not isinstance(doc, dict):
        raise ArchError(f"{path}: expected a mapping of architecture fields")
    if "arch" not in doc and {"space", "provenance", "scores"} & set(doc):
        # A search result that lost its `arch:` would otherwise fail on "unknown key 'provenance'".
        raise ArchError(f"{path}: a search result without 'arch': best.yaml holds the architecture under 'arch:'")
    body = doc["arch"] if "arch" in doc else doc
    source = f"{path}: arch" if "arch" in doc else str(path)
    return Arch.from_dict(body, source=source), doc


def resolve_arch(spec: "str | Path | Arch", input_size: int | None = None) -> Arch:
    """A preset name, an architecture YAML path, or an Arch; optionally at another input size."""
    if isinstance(spec, Arch):
        arch = spec
    elif str(spec) in PRESETS:
        arch = PRESETS[str(spec)]
    else:
        p = Path(spec)
        if p.suffix.lower() in (".yaml", ".yml") or p.exists():
            arch, _ = load_arch_file(p)
        else:
            hint = did_you_mean(str(spec), PRESETS, list_known=False)
            raise ArchError(f"unknown architecture {str(spec)!r}{hint}: expected a preset "
                            f"({', '.join(list_presets())}) or a YAML file")
    if input_size is not None:
        try:
            arch = arch.replace(input_size=input_size)
        except ArchError as e:
            raise ArchError(f"--input-size: {e}") from None
    return arch


def is_architecture(spec: str) -> bool:
    """Whether a command-line MODEL names an architecture rather than a checkpoint: a preset, a
    YAML file, or a name that is no file and has no checkpoint suffix (a mistyped preset then
    gets `resolve_arch`'s error)."""
    p = Path(spec)
    if spec in PRESETS or p.suffix.lower() in (".yaml", ".yml"):
        return True
    return not p.is_file() and p.suffix.lower() not in (".pt", ".pth")


def save_arch(arch: Arch, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write `{arch: ..., **extra}` as YAML, atomically."""
    from .utils.io import atomic_write_text

    doc: dict[str, Any] = {"arch": arch.to_dict()}
    if extra:
        doc.update(extra)
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
