"""Device profiling and latency prediction.

* `profile_device` / `write_bundle` / `import_results`: build a latency table on this machine,
  or through a bundle that runs on a device with only numpy and onnxruntime (`run_bundle.py`).
* `LatencyPredictor`: whole-network latency of an `Arch` from a table, for the search.
* `measure_latency`: one architecture timed as the tables' validation subnets are
  (`table_timing(table)`: with the settings a given table was measured with).

Names are imported on first use (PEP 562), so that `nas --help`, which reads the runner's
defaults, does not pay for importing PyTorch.
"""

import importlib
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

_EXPORTS = {
    "LatencyPredictor": "predictor", "load_predictor": "predictor",
    "load_table": "table", "check_table": "table", "default_table_name": "table",
    "write_table": "table",
    "profile_device": "profiler", "measure_latency": "profiler", "table_timing": "profiler",
    "write_bundle": "bundle", "import_results": "bundle", "build_table": "results",
    "kendall_tau": "metrics", "prediction_errors": "metrics", "fit_calibration": "metrics",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
