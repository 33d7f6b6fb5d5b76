"""The bundle for a remote device: a zip of the plan's models, its manifest and the runner
(`run_bundle.py`, `timing.py`) that times them there; and the table from the RESULTS.json the
device sends back, built as a local profile's is (`results.build_table`)."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ..errors import LatencyTableError
from ..space import SearchSpace
from ..utils.io import atomic_write
from . import run_bundle, timing
from .profiler import export_models, plan_for
from .results import build_table
from .table import read_json
from .timing import Progress

RUNNER_FILES = (run_bundle, timing)  # the modules a bundle ships, as <name>.py beside the manifest

BUNDLE_README = """picodet-nas latency bundle: {space} at input size(s) {sizes}, {n} models.

Needs only Python 3.8+, numpy and onnxruntime on the device:

    pip install numpy onnxruntime
    unzip {zip_name} && cd {folder}
    python run_bundle.py               # --threads N overrides the bundle's {threads} thread(s)

Copy the RESULTS.json it writes in {folder}/ back and run:

    nas profile-device --import RESULTS.json [--out TABLE.json]

Keep the device plugged in, idle and cool while it runs: the table is only as good as the timing.
"""


def write_bundle(space: SearchSpace, out: str | Path, *, progress: Progress = None, **plan_kwargs: Any) -> Path:
    """A zip holding the plan's models (graphs only), manifest.json, the runner and a README,
    under one folder named after the zip."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise LatencyTableError(f"--bundle {out}: expected a .zip path")
    manifest = plan_for(space, **plan_kwargs)
    folder = out.stem
    with tempfile.TemporaryDirectory(prefix="nas-bundle-") as d:
        root = Path(d)
        export_models(manifest, root, progress)
        (root / run_bundle.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        for module in RUNNER_FILES:
            shutil.copyfile(module.__file__, root / Path(module.__file__).name)
        n = len(manifest["models"])
        (root / "README.txt").write_text(BUNDLE_README.format(
            space=space.name, sizes=", ".join(map(str, manifest["input_sizes"])), n=n, zip_name=out.name,
            folder=folder, threads=manifest["settings"]["threads"]))

        def write_zip(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for path in sorted(root.rglob("*")):
                    if path.is_file():
                        z.write(path, f"{folder}/{path.relative_to(root).as_posix()}")

        atomic_write(out, write_zip)
    return out


def import_results(path: str | Path, *, name: str | None = None, statistic: str | None = None) -> dict:
    """The table from a device's RESULTS.json (same construction as a local profile)."""
    doc = read_json(path, "results")
    return build_table(doc, name=name, statistic=statistic, source="bundle", results_name=str(Path(path)))
