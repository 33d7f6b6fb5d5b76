"""Whole-network latency of an `Arch` from a latency table.

predicted_ms = a * (stem + sum of the 13 block entries + neck_head) + b

with `a`, `b` the table's calibration (fitted on whole-network measurements of subnets that
are not the validation subnets). The search calls this millions of times, so:

* `predict(arch)` is a few dictionary lookups (one per block, the stem and the neck+head)
  behind a cache keyed by the (hashable) Arch: microseconds, no numpy;
* `predict_indices(idx)` scores a whole population at once: `idx` holds, per row, the index of
  each gene's choice in `space.genes` order, and the sum is gathered from per-gene lookup
  arrays precomputed per input size;
* the extremes of the space (`range_ms`) are exact: with additive per-block terms the
  fastest subnet takes the fastest choice of every block separately, and the calibration
  is increasing.

An architecture outside the table's space, or at an input size the table was not measured
at, is a `LatencyTableError` of one line, never a silent guess.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..arch import NUM_BLOCKS, Arch
from ..errors import LatencyTableError, SpaceError
from ..space import SearchSpace
from .plan import block_choices, block_options, neck_head_choices, neck_head_options
from .table import check_table, load_table

CACHE_LIMIT = 1 << 20  # cached predictions before the cache is cleared (bounded memory in a long search)


class LatencyPredictor:
    def __init__(self, table: dict, source: str = "latency table", complete: bool = True):
        """`complete=False` serves the table builder: a table without range_ms and validation."""
        self.table = check_table(table, source, complete)
        self.source = source
        meta = table["meta"]
        try:
            self.space = SearchSpace.from_dict(meta["space"]["definition"], source=f"{source}: meta.space")
        except SpaceError as e:
            raise LatencyTableError(str(e)) from None
        if self.space.fingerprint != meta["space"]["fingerprint"]:
            raise LatencyTableError(f"{source}: meta.space.definition does not match its fingerprint "
                                    f"{meta['space']['fingerprint']} (the file was edited or is corrupt)")
        self.input_sizes = tuple(int(s) for s in meta["input_sizes"])
        for s in self.input_sizes:
            if s not in self.space.input_sizes:
                raise LatencyTableError(f"{source}: input size {s} is not a choice of the table's space")
        self.statistic = meta["statistic"]
        self.precision = meta.get("precision", "fp32")  # tables from before INT8 timing are float
        self.num_classes = int(meta["num_classes"])
        key = f"{self.statistic}_ms"
        self._scale = self.space.base.scale
        self.a = float(table["calibration"]["a"])
        self.b = float(table["calibration"]["b"])

        try:
            self._stem = {int(r["input_size"]): float(r[key]) for r in table["fixed"]["stem"]}
            self._neck_head = {(int(r["input_size"]), int(r["neck_channels"]), int(r["head_convs"])): float(r[key])
                               for r in table["fixed"]["neck_head"]}
            self._block = {(int(r["block"]), int(r["input_size"]), float(r["channel_ratio"]), int(r["kernel_size"])):
                           float(r[key]) for r in table["entries"]}
        except (TypeError, ValueError):
            raise LatencyTableError(f"{source}: an entry holds a non-numeric block, choice or size") from None
        self._check_coverage()
        self._build_arrays()
        self._cache: dict[Arch, float] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> "LatencyPredictor":
        return cls(load_table(path), str(path))

    # ---- identity -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.table["meta"].get("name", self.source))

    def check_space(self, space: SearchSpace) -> None:
        """A search or a supernet of `space` may use this table only if it is the same space."""
        if space.fingerprint != self.space.fingerprint:
            raise LatencyTableError(f"{self.source} was measured for space {self.space.name!r} (fingerprint "
                                    f"{self.space.fingerprint}), not for {space.name!r} ({space.fingerprint})")

    def check_num_classes(self, num_classes: int) -> None:
        """The head's output width depends on the class count; a table of another count is refused."""
        if num_classes != self.num_classes:
            raise LatencyTableError(f"{self.source} was measured with a {self.num_classes}-class head, not "
                                    f"{num_classes} (pass --num-classes {self.num_classes} or profile again)")

    def _check_coverage(self) -> None:
        for s in self.input_sizes:
            if s not in self._stem:
                raise LatencyTableError(f"{self.source}: fixed.stem has no entry for input size {s}")
            for neck, head in neck_head_choices(self.space):
                if (s, neck, head) not in self._neck_head:
                    raise LatencyTableError(f"{self.source}: fixed.neck_head has no entry for neck_channels {neck}, "
                                            f"head_convs {head}, input size {s}")
            for i in range(NUM_BLOCKS):
                for ratio, kernel in block_choices(self.space, i):
                    if (i, s, float(ratio), int(kernel)) not in self._block:
                        raise LatencyTableError(f"{self.source}: entries lack block {i} with channel_ratio {ratio}, "
                                                f"kernel_size {kernel} at input size {s}")

    # ---- one architecture -----------------------------------------------------------
    def predict(self, arch: Arch) -> float:
        """Predicted whole-network latency of `arch` in ms (calibrated)."""
        try:
            return self._cache[arch]
        except KeyError:
            pass
        value = self.a * self.sum_of_parts(arch) + self.b
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[arch] = value
        return value

    def sum_of_parts(self, arch: Arch) -> float:
        """Uncalibrated sum of the stem, block and neck+head entries of `arch`, in ms."""
        size = arch.input_size
        stem = self._stem.get(size)
        if stem is None or arch.scale != self._scale:
            raise self._outside(arch)
        total = stem
        block = self._block
        for i, (r, k) in enumerate(zip(arch.channel_ratio, arch.kernel_size)):
            v = block.get((i, size, r, k))
            if v is None:
                raise self._outside(arch)
            total += v
        nh = self._neck_head.get((size, arch.neck_channels, arch.head_convs))
        if nh is None:
            raise self._outside(arch)
        return total + nh

    def breakdown(self, arch: Arch) -> dict[str, Any]:
        """Per-part figures of `arch` (uncalibrated) and the calibrated total."""
        total = self.sum_of_parts(arch)
        s = arch.input_size
        return {
            "stem_ms": self._stem[s],
            "blocks_ms": [self._block[(i, s, r, k)] for i, (r, k) in
                          enumerate(zip(arch.channel_ratio, arch.kernel_size))],
            "neck_head_ms": self._neck_head[(s, arch.neck_channels, arch.head_convs)],
            "sum_ms": total,
            "predicted_ms": self.a * total + self.b,
        }

    def _outside(self, arch: Arch) -> LatencyTableError:
        """The one-line reason `arch` cannot be predicted from this table."""
        try:
            self.space.encode(arch)
        except SpaceError as e:
            return LatencyTableError(f"{self.source}: not in the table's space ({e})")
        return self._unmeasured(arch.input_size, f"; profile it with --input-size {arch.input_size}")

    def _unmeasured(self, input_size: int, hint: str = "") -> LatencyTableError:
        sizes = ", ".join(map(str, self.input_sizes))
        return LatencyTableError(f"{self.source}: input size {input_size} was not measured (the table holds {sizes})"
                                 + hint)

    # ---- many architectures ---------------------------------------------------------
    def predict_many(self, archs: Iterable[Arch]) -> np.ndarray:
        """Predicted latencies (ms) of several architectures, as an array."""
        return np.fromiter((self.predict(a) for a in archs), dtype=np.float64)

    def _build_arrays(self) -> None:
        """Per-gene lookup arrays for `predict_indices`: for block i, T_i[size, ratio, kernel];
        for the neck+head, NH[size, neck, head]; the stem, S[size]. Sizes index the space's
        input-size choices; sizes the table lacks hold NaN and are refused."""
        sp = self.space
        self._gene_col = {g.name: c for c, g in enumerate(sp.genes)}
        sizes = sp.input_sizes
        nan = math.nan
        self._stem_arr = np.array([self._stem.get(s, nan) for s in sizes])
        self._block_arr = []
        for i in range(NUM_BLOCKS):
            ratios, kernels = block_options(sp, i)
            self._block_arr.append(np.array([[[self._block.get((i, s, float(r), int(k)), nan) for k in kernels]
                                              for r in ratios] for s in sizes]))
        necks, heads = neck_head_options(sp)
        self._nh_arr = np.array([[[self._neck_head.get((s, n, h), nan) for h in heads] for n in necks]
                                 for s in sizes])

    def predict_indices(self, idx: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """Vectorised prediction for many genomes given as choice indices.

        `idx[n, g]` is the index of the value of gene `space.genes[g]` in that gene's `choices`
        (the encoding a population array naturally has). Returns predicted ms per row.
        """
        idx = np.asarray(idx, dtype=np.intp)
        if idx.ndim != 2 or idx.shape[1] != len(self.space.genes):
            raise LatencyTableError(f"{self.source}: expected an index array of shape (N, {len(self.space.genes)}), "
                                    f"got {idx.shape}")
        for g, gene in enumerate(self.space.genes):
            if idx.size and (idx[:, g].min() < 0 or idx[:, g].max() >= len(gene.choices)):
                raise LatencyTableError(f"{self.source}: index out of range for gene {gene.name} "
                                        f"({len(gene.choices)} choices)")
        zeros = np.zeros(idx.shape[0], dtype=np.intp)
        col = self._gene_col

        def column(name: str) -> np.ndarray:
            c = col.get(name)
            return idx[:, c] if c is not None else zeros

        size = column("input_size")
        total = self._stem_arr[size].copy()
        for i in range(NUM_BLOCKS):
            total += self._block_arr[i][size, column(f"channel_ratio.{i}"), column(f"kernel_size.{i}")]
        total += self._nh_arr[size, column("neck_channels"), column("head_convs")]
        if np.isnan(total).any():
            bad = sorted({self.space.input_sizes[s] for s in size[np.isnan(total)]})
            raise self._unmeasured(bad[0])
        return self.a * total + self.b

    def encode_indices(self, archs: Iterable[Arch]) -> np.ndarray:
        """The index form of `archs` for `predict_indices`; a LatencyTableError for an arch outside the space."""
        rows = []
        for arch in archs:
            try:
                genome = self.space.encode(arch)
            except SpaceError as e:
                raise LatencyTableError(f"{self.source}: {e}") from None
            rows.append([g.choices.index(v) for g, v in zip(self.space.genes, genome)])
        return np.asarray(rows, dtype=np.intp).reshape(-1, len(self.space.genes))

    # ---- extremes of the space ------------------------------------------------------
    def extreme(self, input_size: int, slowest: bool = False) -> tuple[float, Arch]:
        """(predicted ms, Arch) of the fastest (or slowest) subnet of the space at `input_size`.

        Exact, not sampled: every term of the sum depends on its own genes only, so the
        extreme takes each block's and the neck+head's extreme choice independently, and
        `a * sum + b` with a > 0 preserves the order.
        """
        if input_size not in self.input_sizes:
            raise self._unmeasured(input_size)
        pick = max if slowest else min
        sp = self.space
        ratios, kernels = list(sp.base.channel_ratio), list(sp.base.kernel_size)
        for i in range(NUM_BLOCKS):
            r, k = pick(block_choices(sp, i), key=lambda c: self._block[(i, input_size, float(c[0]), int(c[1]))])
            ratios[i], kernels[i] = r, k
        neck, head = pick(neck_head_choices(sp), key=lambda c: self._neck_head[(input_size, c[0], c[1])])
        arch = sp.base.replace(channel_ratio=tuple(ratios), kernel_size=tuple(kernels), neck_channels=neck,
                               head_convs=head, input_size=input_size)
        return self.predict(arch), arch

    def range_ms(self) -> dict[str, Any]:
        """The `range_ms` block of a table: fastest and slowest predicted subnet overall and per size."""
        per_size = {}
        fast, slow = [], []
        for s in self.input_sizes:
            f, s_ = self.extreme(s), self.extreme(s, slowest=True)
            fast.append(f)
            slow.append(s_)
            per_size[str(s)] = {"fastest": round(f[0], 4), "slowest": round(s_[0], 4)}
        f_ms, f_arch = min(fast, key=lambda t: t[0])
        s_ms, s_arch = max(slow, key=lambda t: t[0])
        return {"fastest": round(f_ms, 4), "slowest": round(s_ms, 4), "fastest_arch": f_arch.to_dict(),
                "slowest_arch": s_arch.to_dict(), "per_input_size": per_size}

    @property
    def fastest_ms(self) -> float:
        return min(self.extreme(s)[0] for s in self.input_sizes)


def load_predictor(path: str | Path) -> LatencyPredictor:
    return LatencyPredictor.from_file(path)
