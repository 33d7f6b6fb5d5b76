"""nas profile-device --space SPACE [--input-size N ...] [--threads T] | --bundle OUT.zip | --import RESULTS.json"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    from ..latency import run_bundle
    from ..space import list_spaces
    from .config import add_config_flags

    p = sub.add_parser(
        "profile-device",
        help="measure a search space's blocks on this device and write a validated latency table",
        description="Time every distinct block choice at every block position, the stem and every neck+head "
        "choice of a search space with ONNX Runtime (CPU, batch 1, the deployed form without "
        "post-processing), fit a calibration on whole random subnets, and validate the predictor on "
        "other random subnets. Writes latency_tables/<name>.json and a predicted-vs-measured plot beside it. "
        "With --bundle, packs the same measurement for a device that has only numpy and onnxruntime; "
        "with --import, turns that device's RESULTS.json into the table.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bundle", metavar="OUT.zip",
                      help="write a bundle (models, manifest, run_bundle.py) for a remote device instead of timing here")
    mode.add_argument("--import", dest="import_path", metavar="RESULTS.json",
                      help="build the table from the RESULTS.json a bundle's run_bundle.py wrote")
    p.add_argument("--space", help=f"search space: a registered name ({', '.join(list_spaces())}) or a YAML file")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N",
                   help="input size(s) to profile, each a choice of the space (default: all of the space's)")
    p.add_argument("--threads", type=int, default=run_bundle.DEFAULT_THREADS,
                   help=f"intra-op threads, the deployment's thread count (default: {run_bundle.DEFAULT_THREADS})")
    p.add_argument("--repeats", type=int, default=run_bundle.DEFAULT_REPEATS,
                   help=f"timed calls per model; the figure is their median (default: {run_bundle.DEFAULT_REPEATS})")
    p.add_argument("--warmup", type=int, default=run_bundle.DEFAULT_WARMUP,
                   help=f"untimed warm-up calls per model (default: {run_bundle.DEFAULT_WARMUP})")
    p.add_argument("--burst", type=int, default=run_bundle.DEFAULT_BURST,
                   help="timed calls back to back per visit of the round-robin, after one untimed call "
                        f"(default: {run_bundle.DEFAULT_BURST})")
    p.add_argument("--validate", type=int, default=30, metavar="K",
                   help="random whole subnets to validate the predictor on (default: 30; 0 skips validation)")
    p.add_argument("--calibrate", type=int, default=30, metavar="C",
                   help="other random whole subnets to fit the calibration on (default: 30)")
    p.add_argument("--num-classes", type=int, default=80,
                   help="classes of the detector head (default: 80, COCO); the head's output width depends on it")
    p.add_argument("--statistic", choices=("median", "p25", "p10"), default=None,
                   help="figure the predictor uses (default: median; p25 is steadier on a machine that cannot "
                        "be kept quiet). With --import: override the bundle's choice")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall (default), or cpu: the timing thread's CPU time, which leaves out the time other "
                        "processes took the core; much steadier on a shared machine; --threads 1 only")
    p.add_argument("--spinning", choices=("auto", "on", "off"), default="auto",
                   help="ORT thread-pool spinning (default auto: off with more than one thread, where it "
                        "turns background load into outliers)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="fp32 (default), or int8: every part and subnet statically quantized with ONNX Runtime's "
                        "tools (QDQ, int8 per-channel weights, uint8 activations) before it is timed")
    p.add_argument("--target-mape", type=_fraction, default=0.02, metavar="F",
                   help="the validation MAPE asked for, as a fraction (default: 0.02); above it the table is marked "
                        "too noisy and a warning says so")
    p.add_argument("--pin-core", metavar="auto|N|off", default=None,
                   help="time on one core: auto (the idlest when profiling starts), a core number, or off "
                        "(default: off; --threads 1 only). The measured latencies of nas retrain follow the table")
    p.add_argument("--phases", type=int, default=run_bundle.DEFAULT_PHASES, metavar="K",
                   help="time every model in K independent passes, each with freshly loaded models, and average "
                        "them (geometric mean): run-to-run noise is what one pass cannot average out "
                        f"(default: {run_bundle.DEFAULT_PHASES}; K times the timing)")
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="onnxruntime (default) or torch (eager PyTorch, torch.set_num_threads(T))")
    p.add_argument("--device-name", help="device name in the table and its default file name (default: host name)")
    p.add_argument("--name", help="table name (default: <device>-<ort|torch>-t<threads>-<space>[-i<sizes>])")
    p.add_argument("--out", help="table path (default: latency_tables/<name>.json)")
    p.add_argument("--force", action="store_true", help="overwrite an existing table or bundle")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration/validation subnets (default: 0)")
    add_config_flags(p, "profile", shared=("seed", "space"), exclude=("bundle", "import_path", "force"))
    p.set_defaults(handler=run)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.02, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def plan_settings(values: dict) -> dict:
    """The measurement settings (`latency.plan_for`'s arguments) of the command's options."""
    from ..latency import run_bundle

    return dict(input_sizes=values["input_size"], threads=values["threads"], repeats=values["repeats"],
                warmup=values["warmup"], burst=values["burst"], calibrate=values["calibrate"],
                validate=values["validate"], num_classes=values["num_classes"],
                statistic=values["statistic"] or "median", clock=values["clock"],
                allow_spinning={"auto": None, "on": True, "off": False}[values["spinning"]],
                pin_core=values.get("pin_core"), precision=values.get("precision") or "fp32",
                phases=run_bundle.DEFAULT_PHASES if values.get("phases") is None else values["phases"], seed=values["seed"])


class _ProgressBars:
    """One tqdm bar per stage (export, timing parts, timing whole networks) on stderr; when stderr
    is not a terminal (a log file), one line per finished stage instead of the bar's frames."""

    def __init__(self) -> None:
        self.bar = None
        self.stage = None
        self.terminal = sys.stderr.isatty()

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if not self.terminal:
            if done >= total and stage != self.stage:
                print(f"{stage}: {total}/{total} done", file=sys.stderr, flush=True)
                self.stage = stage
            return

        if stage != self.stage or self.bar is None:
            self.close()
            self.bar = tqdm(total=total, desc=stage, leave=False, file=sys.stderr, dynamic_ncols=True)
            self.stage = stage
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


def _refuse_overwrite(path: Path, force: bool) -> None:
    from ..errors import UserError

    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it or --out to write elsewhere")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..latency import default_table_name, import_results, profile_device, write_bundle, write_table
    from ..latency.run_bundle import device_info
    from ..latency.timing import check_pin
    from ..latency.table import DEFAULT_DIR
    from ..space import load_space
    from .config import resolve

    values = resolve(args)
    progress = _ProgressBars()
    if args.import_path:
        table = import_results(args.import_path, name=values["name"], statistic=values["statistic"])
        out = Path(values["out"]) if values["out"] else DEFAULT_DIR / f"{table['meta']['name']}.json"
        _refuse_overwrite(out, args.force)
    else:
        if not values["space"]:
            raise UserError("--space is required (or --import RESULTS.json)")
        space = load_space(values["space"])
        plan_kwargs = plan_settings(values)
        if args.bundle:
            if values["backend"] != "onnxruntime":
                raise UserError("--bundle times with onnxruntime on the device; --backend torch does not apply")
            out = Path(args.bundle)
            _refuse_overwrite(out, args.force)
            write_bundle(space, out, progress=progress, **plan_kwargs)
            progress.close()
            print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); on the device: unzip it, run "
                  f"`python {out.stem}/run_bundle.py`, then `nas profile-device --import RESULTS.json`")
            return 0
        try:  # a core this machine lacks fails now, not after minutes of exporting
            check_pin(plan_kwargs["pin_core"], plan_kwargs["threads"])
        except ValueError as e:
            raise UserError(f"--pin-core {plan_kwargs['pin_core']}: {e}") from None
        # Name and path first: a run of minutes must not end in "file exists".
        name = values["name"] or default_table_name(values["device_name"] or device_info()["device"],
                                                    values["backend"], values["threads"], space.name,
                                                    values["input_size"] or space.input_sizes, space.input_sizes,
                                                    values.get("precision") or "fp32")
        out = Path(values["out"]) if values["out"] else DEFAULT_DIR / f"{name}.json"
        _refuse_overwrite(out, args.force)
        table = profile_device(space, backend=values["backend"], device_name=values["device_name"], name=name,
                               progress=progress, **plan_kwargs)
    progress.close()
    val = table["validation"]
    if val["subnets"] and val["mape"] is not None:
        target = values["target_mape"]
        val["target_mape"], val["too_noisy"] = target, bool(val["mape"] > target)
    path, png = write_table(table, out)
    print(_report(table, path, png))
    if val.get("too_noisy"):
        print(f"nas profile-device: warning: the machine was too noisy for the asked accuracy: validation MAPE "
              f"{100 * val['mape']:.1f}% > --target-mape {100 * val['target_mape']:.1f}% (measurement noise "
              f"{100 * val['noise']:.0f}%); the table says so (validation.too_noisy). Profile again with nothing "
              "else running, or with --clock cpu / --pin-core auto", file=sys.stderr)
    return 0


def _report(table: dict, path: Path, png: Path) -> str:
    meta, val, cal, rng = table["meta"], table["validation"], table["calibration"], table["range_ms"]
    parts = {e["part"] for e in table["entries"]}
    lines = [
        f"wrote {path} and {png.name}",
        f"  {meta['device']} ({meta['cpu_model']}), {meta['backend']} {meta['backend_version']}, "
        f"{meta['threads']} thread(s), input size(s) {', '.join(map(str, meta['input_sizes']))}",
        f"  {len(table['entries'])} block entries from {len(parts)} distinct blocks; "
        f"{len(table['fixed']['neck_head'])} neck+head entries; profiled in {meta['wall_time_s']:.0f} s",
        f"  calibration ({cal['method']}, {cal.get('subnets', 0)} subnets): "
        f"predicted = {cal['a']:.4f} x sum {cal['b']:+.4f} ms",
        f"  space spans {rng['fastest']:.2f} to {rng['slowest']:.2f} ms (predicted)",
    ]
    if val["subnets"]:
        tau = val["kendall_tau"]
        lines.append(f"  validation on {val['subnets']} subnets: MAPE {100 * val['mape']:.1f}%, within ±5% "
                     f"{100 * val['within_5pct']:.0f}%, within ±10% {100 * val['within_10pct']:.0f}%, "
                     f"Kendall tau {'n/a' if tau is None else f'{tau:.3f}'}; measurement noise "
                     f"(p90-p10)/median {100 * val['noise']:.0f}%")
    else:
        lines.append("  validation skipped (--validate 0)")
    return "\n".join(lines)
