"""ONNX export runs in ONNX Runtime and agrees with PyTorch, with and without post-processing."""

import copy
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from picodet_nas.arch import PRESETS
from picodet_nas.export import DeployModel, DetectModel, export_onnx
from picodet_nas.models import build_model
from picodet_nas.postprocess import EVAL_NMS
from picodet_nas.registry import get_preset, get_space, list_presets, list_spaces
from supernet import Supernet

from engine_helpers import one_line_error
from helpers import make_realistic, random_arch, structured_images

REPO = Path(__file__).resolve().parent.parent


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _float32_floor(model, x):
    """The network's own float32 rounding error: max |float32 - float64| over its outputs."""
    with torch.no_grad():
        ref = DeployModel(model)(x)
        ref64 = DeployModel(copy.deepcopy(model).double())(x.double())
    return ref, max(float((r.double() - r64).abs().max()) for r, r64 in zip(ref, ref64))


def _check_raw(model, size, path, batch=2):
    """ONNX Runtime against PyTorch: within 1e-4, or, where a random network's outputs are
    ill-conditioned, within 3x its own float32 rounding error (PyTorch float32 against
    float64) or 1e-4 relative to the output's magnitude, whichever is larger."""
    export_onnx(model, path, input_size=size)
    x = structured_images(batch, size, torch.Generator().manual_seed(size))
    got = _session(path).run(None, {"image": x.numpy()})
    ref, floor = _float32_floor(model, x)
    assert len(got) == len(ref) == 8
    for g, r in zip(got, ref):
        assert g.shape == tuple(r.shape)
        assert float(np.abs(g - r.numpy()).max()) <= max(1e-4, 3 * floor, 1e-4 * float(r.abs().max()))


def _unmatched(a, b, score_tol=1e-4, box_tol=1e-2):
    """How many detections of `a` and `b` have no counterpart of the same class within the
    tolerances in the other. Detections whose score ties (within the tolerance) with the last
    kept one, or with the score threshold, may legitimately differ at the keep-top-k cut or the
    threshold and are not counted."""
    (ab, as_, ac), (bb, bs, bc) = a, b
    cut = max(min(as_.min(), bs.min()), EVAL_NMS.score_thr) + score_tol
    used = np.zeros(len(bs), bool)
    missing = 0
    for box, score, cls in zip(ab, as_, ac):
        cand = np.flatnonzero(~used & (bc == cls) & (np.abs(bs - score) <= score_tol)
                              & (np.abs(bb - box).max(axis=1) <= box_tol))
        if len(cand):
            used[cand[0]] = True
        elif score > cut:
            missing += 1
    return missing + int(np.sum(~used & (bs > cut)))


def _check_detections(model, size, path):
    export_onnx(model, path, input_size=size, postprocess=True)
    x = structured_images(1, size, torch.Generator().manual_seed(size + 1))
    boxes, scores, classes = _session(path).run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in DetectModel(model)(x)]
    floor = _float32_floor(model, x)[1]
    assert len(scores) > 0 and boxes.shape[1:] == ref[0].shape[1:]
    assert np.all(np.diff(scores) <= 0)  # sorted by score
    if floor > 1e-3:
        # An ill-conditioned random net: its float32 noise alone flips NMS decisions at IoU
        # ~0.6, so detections are no test of the export. Its raw outputs were compared.
        return False
    assert _unmatched((boxes, scores, classes), ref, score_tol=max(1e-4, 3 * floor),
                      box_tol=max(1e-2, 64 * 3 * floor)) == 0
    return True


@pytest.mark.parametrize("name", list_presets())
def test_presets_onnx_parity(name, tmp_path):
    """Every registered preset, raw outputs and detections, at its input size (at most 416)."""
    arch = get_preset(name)
    size = min(arch.input_size, 416)
    torch.manual_seed(0)
    model = make_realistic(build_model(arch), size)
    _check_raw(model, size, tmp_path / "raw.onnx")
    _check_detections(model, size, tmp_path / "det.onnx")


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_exports_its_extracted_subnets(name, tmp_path):
    """The largest and the smallest subnet of every registered space, as the supernet extracts
    them, exported and run in ONNX Runtime at 64 px (raw outputs)."""
    space = get_space(name)
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes=3)
    for i, arch in enumerate((space.largest(), space.smallest())):
        model = make_realistic(supernet.extract(arch), 64, seed=i)
        _check_raw(model, 64, tmp_path / f"{i}.onnx", batch=1)


def test_random_archs_onnx_parity(tmp_path):
    rng = random.Random(2024)
    compared = 0
    for i in range(20):
        arch = random_arch(rng, input_sizes=(64, 96, 128))
        torch.manual_seed(i)
        model = make_realistic(build_model(arch, num_classes=rng.choice((1, 5, 12))), arch.input_size, seed=i)
        _check_raw(model, arch.input_size, tmp_path / f"raw{i}.onnx", batch=1 + i % 2)
        compared += _check_detections(model, arch.input_size, tmp_path / f"det{i}.onnx")
    assert compared >= 15


def test_dynamic_batch(tmp_path):
    model = make_realistic(build_model(PRESETS["picodet-s"]), 128)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=128)
    sess = _session(path)
    for b in (1, 3):
        assert sess.run(None, {"image": np.zeros((b, 3, 128, 128), np.float32)})[0].shape == (b, 256, 80)


def test_export_leaves_model_in_eval_mode(tmp_path):
    model = build_model(PRESETS["picodet-s"]).eval()
    export_onnx(model, tmp_path / "m.onnx", input_size=96)
    assert not any(m.training for m in model.modules())


# ----------------------------------------------------------------------------- deployable ONNX


def _matched(expected: list[dict], got: list[dict]) -> bool:
    """Every detection of `expected` has one in `got` of the same class, box within 0.5 px and
    score within 1e-4 (and no detection is left over)."""
    left = list(got)
    for e in expected:
        for g in left:
            if g["label"] == e["label"] and abs(g["score"] - e["score"]) <= 1e-4 and \
                    max(abs(a - b) for a, b in zip(g["bbox"], e["bbox"])) <= 0.5:
                left.remove(g)
                break
        else:
            return False
    return not left


def test_onnx_example_reads_the_metadata_and_matches_nas_predict(tmp_path):
    """examples/onnx_predict.py (numpy, Pillow, onnxruntime) on 5 images gives nas predict's detections,
    with the boxes mapped back by the example, and with --original-size in the graph (non-square images)."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from engine_helpers import TINY_ARCH, TINY_TRAIN, nas, shapes, write

    shapes(tmp_path / "data")
    write(tmp_path / "tiny.yaml", TINY_ARCH)
    r = nas("retrain", "tiny.yaml", "--data", "data", *TINY_TRAIN, "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    model = tmp_path / "run" / "model.pt"
    square = sorted((tmp_path / "data" / "images").glob("val_*.jpg"))[:5]
    wide = []
    for i, p in enumerate(square):  # non-square copies: 96 x 64 and 64 x 96
        with Image.open(p) as img:
            crop = img.crop((0, 0, 96, 64) if i % 2 else (0, 0, 64, 96))
        wide.append(tmp_path / f"crop_{i}.png")
        crop.save(wide[-1])
    cases = {"mapped": ([], square), "original": (["--original-size"], wide)}
    meta = torch.load(model, map_location="cpu", weights_only=True)["meta"]
    for name, (flags, images) in cases.items():
        r = nas("export", str(model), *flags, "--out", f"{name}.onnx", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        r = nas("predict", str(model), *map(str, images), "--score-thr", "0.025", "--out", f"pred-{name}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        expected = json.loads((tmp_path / f"pred-{name}" / "detections.json").read_text())["images"]
        out = subprocess.run([sys.executable, str(REPO / "examples" / "onnx_predict.py"), f"{name}.onnx",
                              *map(str, images), "--score-thr", "0.025"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout)["images"]
        assert sum(len(e["detections"]) for e in expected) > 0
        for e, g in zip(expected, got, strict=True):
            assert _matched(e["detections"], g["detections"]), (name, e["image"])
            assert all(d["class_name"] == meta["class_names"][d["label"]] for d in g["detections"])
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "original.onnx")).metadata_props}
    assert props["input_size"] == 64 and props["category_ids"] == meta["label_to_cat_id"]
    assert props["preprocessing"]["std"] == [0.229, 0.224, 0.225] and props["iou_thr"] == 0.6
    assert "original image" in props["box_pixels"]
    assert one_line_error(nas("export", str(model), "--original-size", "--no-postprocess", "--out", "x.onnx",
                              cwd=tmp_path)).endswith("--original-size needs the post-processing (drop --no-postprocess)")
