"""The latency table file: reading it safely, writing it (with its validation plot), naming it.

A table is JSON (the key names are a contract: other tools read them)::

    {
      "format": "picodet-nas-latency-table", "version": 1,
      "meta": {device, cpu_model, os, backend, backend_version, threads, batch, input_sizes,
               space: {name, fingerprint, definition}, num_classes, repeats, warmup, statistic, date, ...},
      "entries": [{block, channel_ratio, kernel_size, input_size, part, median_ms, p10_ms, p25_ms,
                   p75_ms, p90_ms, samples}, ...],          # one per block position x choice x size
      "fixed": {"stem": [{input_size, part, median_ms, ...}],
                "neck_head": [{neck_channels, head_convs, input_size, part, median_ms, ...}]},
      "calibration": {method, formula, a, b, subnets, loo_mape, samples: [{arch, sum_ms, measured_ms}]},
      "range_ms": {fastest, slowest, fastest_arch, slowest_arch, per_input_size: {"320": {fastest, slowest}}},
      "validation": {subnets, mape, within_5pct, within_10pct, kendall_tau, max_abs_pct_error,
                     raw_sum_mape, noise, plot, samples: [{arch, predicted_ms, measured_ms, sum_ms}]}
    }

Entries that share a `part` were one measurement (identical structure and input shape).
Everything that reads a table goes through `load_table`/`check_table`, so a corrupt or
foreign file is one clear `LatencyTableError`, never a KeyError deep in a search.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import LatencyTableError
from ..utils.io import atomic_write_text

TABLE_FORMAT = "picodet-nas-latency-table"
TABLE_VERSION = 1
TOP_KEYS = ("meta", "entries", "fixed", "calibration", "range_ms", "validation")
META_KEYS = ("device", "cpu_model", "os", "backend", "backend_version", "threads", "batch", "input_sizes",
             "space", "num_classes", "repeats", "warmup", "statistic", "date")
STATISTICS = ("median", "p25", "p10")
VALIDATION_KEYS = ("subnets", "mape", "within_5pct", "within_10pct", "kendall_tau", "samples")
DEFAULT_DIR = Path("latency_tables")


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_table(table: Any, source: str = "latency table", complete: bool = True) -> dict:
    """Structural check of a table document; the table itself, or a LatencyTableError (one line).

    Coverage (every block choice of the space at every table size) is checked by the
    predictor, which builds its lookups from the entries anyway. `complete=False` accepts a
    table still being built (no range_ms and validation yet).
    """
    if not isinstance(table, dict):
        raise LatencyTableError(f"{source}: not a latency table (expected a JSON object)")
    if table.get("format") != TABLE_FORMAT:
        raise LatencyTableError(f"{source}: not a latency table (format is {table.get('format')!r}, "
                                f"expected {TABLE_FORMAT!r})")
    if table.get("version") != TABLE_VERSION:
        raise LatencyTableError(f"{source}: table version {table.get('version')!r} is not supported "
                                f"(this picodet-nas reads version {TABLE_VERSION})")
    for key in TOP_KEYS if complete else TOP_KEYS[:4]:
        if key not in table:
            raise LatencyTableError(f"{source}: missing key {key!r}")
    meta = table["meta"]
    if not isinstance(meta, dict):
        raise LatencyTableError(f"{source}: meta must be an object")
    for key in META_KEYS:
        if key not in meta:
            raise LatencyTableError(f"{source}: meta is missing {key!r}")
    space = meta["space"]
    if not isinstance(space, dict) or not {"name", "fingerprint", "definition"} <= set(space):
        raise LatencyTableError(f"{source}: meta.space must hold name, fingerprint and definition")
    if meta["statistic"] not in STATISTICS:
        raise LatencyTableError(f"{source}: meta.statistic {meta['statistic']!r} is not one of {', '.join(STATISTICS)}")
    if meta.get("precision", "fp32") not in ("fp32", "int8"):
        raise LatencyTableError(f"{source}: meta.precision {meta['precision']!r} is not one of fp32, int8")
    stat_key = f"{meta['statistic']}_ms"
    if not isinstance(meta["input_sizes"], list) or not meta["input_sizes"]:
        raise LatencyTableError(f"{source}: meta.input_sizes must be a non-empty list")

    def rows(value: Any, what: str, fields: Iterable[str]) -> None:
        if not isinstance(value, list) or not value:
            raise LatencyTableError(f"{source}: {what} must be a non-empty list")
        for n, row in enumerate(value):
            if not isinstance(row, dict):
                raise LatencyTableError(f"{source}: {what}[{n}] must be an object")
            for f in fields:
                if f not in row:
                    raise LatencyTableError(f"{source}: {what}[{n}] is missing {f!r}")
            if not _positive(row[stat_key]):
                raise LatencyTableError(f"{source}: {what}[{n}].{stat_key} must be a positive number of ms, "
                                        f"got {row[stat_key]!r}")

    rows(table["entries"], "entries", ("block", "channel_ratio", "kernel_size", "input_size", "part", stat_key))
    fixed = table["fixed"]
    if not isinstance(fixed, dict):
        raise LatencyTableError(f"{source}: fixed must be an object with stem and neck_head")
    rows(fixed.get("stem"), "fixed.stem", ("input_size", "part", stat_key))
    rows(fixed.get("neck_head"), "fixed.neck_head", ("neck_channels", "head_convs", "input_size", "part", stat_key))
    cal = table["calibration"]
    if not isinstance(cal, dict) or not _positive(cal.get("a")) or not isinstance(cal.get("b"), (int, float)) \
            or isinstance(cal.get("b"), bool) or not math.isfinite(cal["b"]):
        raise LatencyTableError(f"{source}: calibration must hold a positive slope 'a' and a finite offset 'b'")
    if not complete:
        return table
    val = table["validation"]
    if not isinstance(val, dict) or any(k not in val for k in VALIDATION_KEYS):
        raise LatencyTableError(f"{source}: validation must hold {', '.join(VALIDATION_KEYS)}")
    rng = table["range_ms"]
    if not isinstance(rng, dict) or not _positive(rng.get("fastest")) or not _positive(rng.get("slowest")):
        raise LatencyTableError(f"{source}: range_ms must hold positive 'fastest' and 'slowest'")
    return table


def check_statistic(statistic: str, name: str = "statistic") -> None:
    if statistic not in STATISTICS:
        raise LatencyTableError(f"{name} must be one of {', '.join(STATISTICS)}, got {statistic!r}")


def read_json(path: str | Path, what: str) -> Any:
    """The JSON document in `path`; an unreadable file or invalid JSON is a one-line
    LatencyTableError naming the file (`what`: what the file should hold)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise LatencyTableError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LatencyTableError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def load_table(path: str | Path) -> dict:
    return check_table(read_json(path, "latency table"), str(Path(path)))


def dumps_table(table: dict) -> str:
    """JSON laid out for reading and diffing: objects expanded, one line per entry or sample,
    number lists inline (a joint-space table stays a few thousand lines, not tens of thousands)."""

    def layout(value: Any, indent: str) -> str:
        if isinstance(value, dict) and value:
            inner = indent + " "
            items = [f"{inner}{json.dumps(k)}: {layout(v, inner)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            inner = indent + " "
            return "[\n" + ",\n".join(inner + json.dumps(v) for v in value) + "\n" + indent + "]"
        return json.dumps(value)

    return layout(table, "") + "\n"


def save_table(table: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, dumps_table(table))
    return path


def write_table(table: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the table and its validation plot (same name, .png) next to it."""
    from .plot import plot_validation

    out = Path(out)
    png = out.with_suffix(".png")
    table["validation"]["plot"] = png.name
    save_table(table, out)
    plot_validation(table, png)
    return out, png


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.]+", "-", str(text).lower()).strip("-.") or "device"


def default_table_name(device: str, backend: str, threads: int, space_name: str,
                       input_sizes: Iterable[int], space_sizes: Iterable[int], precision: str = "fp32") -> str:
    """`<device>-<ort|torch>[-int8]-t<threads>-<space>`, plus `-i<sizes>` when only some of the
    space's input sizes were measured: e.g. `edge1-ort-t1-esnet_s`, `pi5-ort-int8-t4-picodet_s_joint-i320`.
    `device` is `--device-name`, else the host name."""
    short = {"onnxruntime": "ort"}.get(backend, backend) + ("-int8" if precision == "int8" else "")
    name = f"{_slug(device)}-{short}-t{threads}-{_slug(space_name)}"
    sizes = sorted(set(input_sizes))
    if sizes != sorted(set(space_sizes)):
        name += "-i" + "-".join(str(s) for s in sizes)
    return name
