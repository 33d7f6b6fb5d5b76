"""What does INT8 deployment cost in accuracy, and does an INT8 latency table predict it?

For each trained `model.pt`: the float mAP on the data's validation split (PyTorch), the mAP of
the same weights exported and statically quantized as `nas retrain --export-int8` does
(`engine.int8_export`, ranges from `--calib-images` training images), both through the one
evaluation path; with `--int8-table` (a `nas profile-device --precision int8` table of the
model's space), the INT8 file's measured latency against the table's prediction, and the float
network's against `--float-table`, timed interleaved as the tables were measured.

    python benchmarks/int8_accuracy.py --data runs/bench/shapes-1500-200-320-s0 \\
        --models runs/bench/search-gain-gt-uniform-pd-s0/retrain-*/model.pt \\
        --int8-table TABLE_INT8.json --float-table TABLE.json --out benchmarks/results/int8_accuracy.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from train_common import write_result

from picodet_nas.data import resolve_data
from picodet_nas.engine.evaluate import evaluate_coco
from picodet_nas.engine.int8_export import OnnxPicoDet, export_int8
from picodet_nas.engine.session import load_split
from picodet_nas.engine.trained import load_trained_model, resize_filter
from picodet_nas.latency import load_table, measure_latency, table_timing
from picodet_nas.latency.anchors import table_anchors
from picodet_nas.latency.predictor import LatencyPredictor
from picodet_nas.latency.profiler import measure_onnx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="model.pt files of nas retrain")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--int8-table", type=Path, help="an INT8 latency table of the models' space")
    ap.add_argument("--float-table", type=Path, help="the float table of the same space (for the float latency)")
    ap.add_argument("--latency-rounds", type=int, default=5)
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    started = time.perf_counter()
    paths = resolve_data(args.data)
    train, val = load_split(paths.train_ann, paths.train_images), load_split(paths.val_ann, paths.val_images)
    tables = {}
    for key, path in (("int8", args.int8_table), ("fp32", args.float_table)):
        if path is not None:
            table = load_table(path)
            if table["meta"].get("precision", "fp32") != key:
                sys.exit(f"{path}: a {table['meta'].get('precision', 'fp32')} table, expected {key}")
            tables[key] = (table, LatencyPredictor(table, str(path)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-int8-bench-") as d:
        for i, weights in enumerate(args.models):
            model, meta, _ = load_trained_model(None, weights)
            size, filt = model.arch.input_size, resize_filter(meta)
            float_coco = evaluate_coco(model, val, size, resize_filter=filt)
            path = export_int8(model, size, train, Path(d), args.calib_images).rename(Path(d) / f"m{i}.int8.onnx")
            int8_coco = evaluate_coco(OnnxPicoDet(path, meta["num_classes"]), val, size, resize_filter=filt)
            row = {"model": str(weights), "arch": model.arch.to_dict(), "float_mAP": float_coco["mAP"],
                   "int8_mAP": int8_coco["mAP"], "mAP_drop": round(float_coco["mAP"] - int8_coco["mAP"], 4),
                   "float_mAP50": float_coco["mAP50"], "int8_mAP50": int8_coco["mAP50"], "_path": str(path),
                   "_arch": model.arch, "_classes": meta["num_classes"]}
            print(f"{weights}: float mAP {row['float_mAP']:.4f}, int8 {row['int8_mAP']:.4f} "
                  f"(drop {row['mAP_drop']:+.4f})", flush=True)
            rows.append(row)
        # latency: every file and network timed in interleaved rounds, as its table was measured, each
        # beside the table's validation subnets nearest it (the machine's drift since the table: anchors)
        times: dict[tuple[int, str], list[dict]] = {}
        for _ in range(args.latency_rounds if tables else 0):
            for i, row in enumerate(rows):
                for key, (table, predictor) in tables.items():
                    t = table_timing(table)
                    t.pop("precision", None)
                    anchors = {"anchors": table_anchors(table, predictor.predict(row["_arch"])),
                               "anchor_classes": table["meta"]["num_classes"]}
                    if key == "int8":
                        stats = measure_onnx(row["_path"], precision="int8", **t, **anchors)
                    else:
                        stats = measure_latency(row["_arch"], num_classes=row["_classes"], **t, **anchors)
                    times.setdefault((i, key), []).append(stats)
        for i, row in enumerate(rows):
            for key, (_, predictor) in tables.items():
                runs = times[i, key]
                measured = statistics.median(r["latency_ms"] for r in runs)
                predicted = predictor.predict(row["_arch"])
                row[f"{key}_measured_ms"], row[f"{key}_predicted_ms"] = round(measured, 4), round(predicted, 4)
                row[f"{key}_measured_over_predicted"] = round(measured / predicted, 4)
                if all("machine_speed" in r for r in runs):
                    speed = statistics.median(r["machine_speed"] for r in runs)
                    row[f"{key}_machine_speed"] = round(speed, 4)
                    row[f"{key}_anchored_ratio"] = round(measured / (predicted * speed), 4)
            for k in ("_path", "_arch", "_classes"):
                row.pop(k)
    worst = max(r["mAP_drop"] for r in rows)
    print(f"largest INT8 mAP drop {worst:+.4f} (bar: 0.02)")
    for r in rows:
        for key in ("int8", "fp32"):
            if f"{key}_measured_over_predicted" in r:
                print(f"{r['model']}: {key} measured / predicted {r[f'{key}_measured_over_predicted']:.3f}"
                      + (f" (machine speed {r[f'{key}_machine_speed']:.3f} of the table's, anchored "
                         f"{r[f'{key}_anchored_ratio']:.3f})" if f"{key}_anchored_ratio" in r else ""))
    write_result(args.out, {"benchmark": "int8_accuracy", "command": " ".join(sys.argv), "data": str(args.data),
                            "calib_images": args.calib_images, "int8_table": str(args.int8_table),
                            "float_table": str(args.float_table), "rows": rows, "largest_mAP_drop": worst,
                            "total_time_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
