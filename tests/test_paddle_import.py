"""`nas import-paddle`: PaddleDetection's legacy PicoDet weights as a model file, checked against
PaddleDetection itself, and trainings started from imported weights (`--init model.pt`).

The parity tests build PaddleDetection's own networks with `ppdet.modeling`, in a process of
their own (`paddle_reference.py`); they skip, saying why, only where `paddle` or `ppdet` cannot
be imported (`.ci/run` installs both). Both frameworks compute in float64 from the same float32
weights, so that the comparison measures the networks and not float32 rounding, which these
random networks amplify: in float32 the two frameworks' PicoDet-S head outputs differ by up to
1.6e-3 on values up to 20, as much as PyTorch's own float32 and float64 outputs (1.4e-3). Everything else runs on `.pdparams` files written here with
`pickle`, the way `paddle.save` writes them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_helpers import TINY_ARCH, TINY_SPACE, TINY_TRAIN, nas, shapes, write
from picodet_nas.arch import PRESETS, REG_MAX, Arch, resolve_arch, save_arch
from picodet_nas.models import build_model
from picodet_nas.paddle_import import COCO_CATEGORIES, STRUCTURE_KEY, backbone_names, paddle_names

TOL = 1e-4  # absolute, on every compared output
OUR_PACKAGES = ("picodet_nas", "supernet", "evolution")

# A searched architecture of picodet_s_joint: non-uniform channel ratios, another neck width,
# head depth and input size; 3x3 kernels, the only ones ppdet's ESNet builds.
SEARCHED = Arch(scale=0.75, channel_ratio=(1.0, 0.625, 0.75, 0.5, 0.875, 1.0, 0.5, 0.75, 0.625, 1.0, 0.875, 0.5, 0.75),
                neck_channels=64, head_convs=3, input_size=288)


# ---- .pdparams files written without Paddle -------------------------------------------------
def fake_arrays(arch: Arch, num_classes: int = 80, seed: int = 0, backbone_only: bool = False) -> dict:
    """Random weights of `arch` under PaddleDetection's names, with the two tensors PicoHead has
    beside them (ScaleReg factors, the distribution projection) and paddle.save's name table."""
    own = build_model(arch, num_classes).state_dict()
    names = backbone_names("") if backbone_only else paddle_names(arch)
    rng = np.random.default_rng(seed)
    arrays = {p: (rng.uniform(0.5, 2.0, own[o].shape) if o.endswith("running_var")
                  else rng.normal(0.0, 0.3, own[o].shape)).astype(np.float32) for o, p in names.items()}
    if not backbone_only:
        arrays.update({f"head.p{i}_feat.scale_reg": np.ones(1, np.float32) for i in (3, 4, 5, 6)})
        arrays["head.distribution_project.project"] = np.arange(REG_MAX + 1, dtype=np.float32)
    arrays[STRUCTURE_KEY] = {k: f"param_{i}" for i, k in enumerate(arrays)}
    return arrays


def write_pdparams(path: Path, arrays) -> Path:
    with open(path, "wb") as f:
        pickle.dump(arrays, f, protocol=4)
    return path


def coco_like(root: Path) -> Path:
    """A shapes dataset whose annotation files list COCO's 80 categories (its shapes' ids are COCO
    ids), so that a COCO model evaluates on it as it would on COCO."""
    data = shapes(root, train=8, val=4, size=96)
    for ann in (data / "annotations").glob("*.json"):
        doc = json.loads(ann.read_text())
        doc["categories"] = [{"id": i, "name": n, "supercategory": "coco"} for i, n in COCO_CATEGORIES]
        ann.write_text(json.dumps(doc))
    return data


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paddle_import")
    write(root / "tiny.yaml", TINY_ARCH)
    tiny = resolve_arch(root / "tiny.yaml")
    write_pdparams(root / "tiny.pdparams", fake_arrays(tiny))
    write_pdparams(root / "tiny_esnet.pdparams", fake_arrays(tiny, backbone_only=True))
    shapes(root / "shapes", train=16, val=4, size=96)  # train-supernet needs 16 training images
    coco_like(root / "coco_like")
    return root


def test_import_maps_every_tensor_and_the_model_file_evaluates_alone(work):
    r = nas("import-paddle", "tiny.pdparams", "--arch", "tiny.yaml", "--out", "tiny.pt", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "dropped 4 tensors (a ScaleReg factor that PicoHead never applies)" in r.stdout
    ckpt = torch.load(work / "tiny.pt", weights_only=True)
    arrays = fake_arrays(resolve_arch(work / "tiny.yaml"))
    for ours, paddle in paddle_names(resolve_arch(work / "tiny.yaml")).items():
        assert torch.equal(ckpt["model"][ours], torch.from_numpy(arrays[paddle])), ours
    meta = ckpt["meta"]
    assert meta["kind"] == "picodet" and meta["num_classes"] == 80 and meta["class_names"][0] == "person"
    assert meta["label_to_cat_id"][-1] == 90 and meta["imported_from"]["sha256"]
    assert meta["preprocessing"]["resize_filter"] == "opencv" and meta["postprocess"]["nms_pre"] == 1000
    r = nas("eval", "tiny.pt", "--data", "coco_like", "--out", "eval", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "mAP" in r.stdout


class Crafted:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(work: Path) -> tuple[Path, str]:
    marker = work / "pwned"
    return write_pdparams(work / "crafted.pdparams", {"backbone._conv1._conv.weight": Crafted(marker)}), "refused"


def _other_model(work: Path) -> tuple[Path, str]:
    arrays = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.weight": np.zeros((1000, 512), np.float32)}
    return write_pdparams(work / "resnet.pdparams", arrays), "holds another model"


def _missing(work: Path) -> tuple[Path, str]:
    arrays = fake_arrays(resolve_arch(work / "tiny.yaml"))
    del arrays["neck.conv_t.convs.1.bn._variance"]
    return write_pdparams(work / "missing.pdparams", arrays), "lacks tensor 'neck.conv_t.convs.1.bn._variance'"


def _mis_shaped(work: Path) -> tuple[Path, str]:
    arrays = fake_arrays(resolve_arch(work / "tiny.yaml"))
    arrays["backbone.3_2._conv_pw._conv.weight"] = np.zeros((8, 16, 1, 1), np.float32)
    return write_pdparams(work / "shape.pdparams", arrays), "tensor 'backbone.3_2._conv_pw._conv.weight' has shape"


def _left_over(work: Path) -> tuple[Path, str]:
    arrays = fake_arrays(resolve_arch(work / "tiny.yaml"))
    arrays["head.extra_conv.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    return write_pdparams(work / "extra.pdparams", arrays), "tensor 'head.extra_conv.weight' (4, 4, 1, 1) maps onto nothing"


def _damaged(work: Path) -> tuple[Path, str]:
    data = (work / "tiny.pdparams").read_bytes()
    path = work / "damaged.pdparams"
    path.write_bytes(data[: len(data) // 2])
    return path, "not a readable .pdparams file"


def _objects(work: Path) -> tuple[Path, str]:
    arrays = {"backbone._conv1._conv.weight": np.array([1, "a"], dtype=object)}
    return write_pdparams(work / "objects.pdparams", arrays), "expected a numeric array"


@pytest.mark.parametrize("case", [_crafted, _other_model, _missing, _mis_shaped, _left_over, _damaged, _objects],
                         ids=lambda c: c.__name__.strip("_"))
def test_bad_files_are_refused_in_one_line(work, case):
    path, message = case(work)
    r = nas("import-paddle", str(path), "--arch", "tiny.yaml", "--out", "bad.pt", cwd=work)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path.name) in lines[0], r.stderr
    assert not (work / "bad.pt").exists() and not (work / "pwned").exists()


def test_crafted_file_names_the_call_it_would_make(work):
    path, _ = _crafted(work)
    r = nas("import-paddle", str(path), "--arch", "tiny.yaml", "--out", "bad.pt", cwd=work)
    assert r.returncode == 2 and "would call posix.system" in r.stderr and not (work / "pwned").exists()


def test_another_size_of_picodet_is_refused_naming_the_tensor(work, tmp_path):
    path = write_pdparams(tmp_path / "s.pdparams", fake_arrays(PRESETS["picodet-s"]))
    r = nas("import-paddle", str(path), "--arch", "picodet-m", "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "tensor 'backbone.2_1._conv_linear_1._conv.weight' has shape (48, 24, 1, 1), picodet-m needs " \
           "(64, 24, 1, 1)" in r.stderr


def test_fine_tuning_from_imported_weights_gets_a_fresh_classifier(work):
    assert nas("import-paddle", "tiny.pdparams", "--arch", "tiny.yaml", "--out", "coco.pt", cwd=work).returncode == 0
    r = nas("retrain", "tiny.yaml", "--data", "shapes", *TINY_TRAIN, "--epochs", "1", "--calib-images", "4",
            "--init", "coco.pt", "--out", "ft", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (work / "ft" / "train.log").read_text()
    assert "fresh classifier: the checkpoint has 80 classes (person, bicycle, car, motorcycle, ...), the data 6" in log
    assert json.loads((work / "ft" / "metrics.json").read_text())["init"] == "pretrained"


def test_a_fresh_classifier_keeps_the_box_distribution_rows(work):
    from picodet_nas.engine.pretrained import initial_state, read_pretrained

    assert nas("import-paddle", "tiny.pdparams", "--arch", "tiny.yaml", "--out", "rows.pt", cwd=work).returncode == 0
    pre = read_pretrained(work / "rows.pt")
    own = build_model(pre.arch, 6).state_dict()
    state, notes = initial_state(pre, pre.arch, own, [f"c{i}" for i in range(6)])
    for level in range(4):
        for leaf in ("weight", "bias"):
            key = f"head.outputs.{level}.{leaf}"
            assert torch.equal(state[key][:6], own[key][:6]) and torch.equal(state[key][6:], pre.state[key][80:])
    assert state["backbone.stem.conv.conv.weight"] is pre.state["backbone.stem.conv.conv.weight"]
    assert "fresh classifier" in notes[0]


def test_fine_tuning_on_the_same_classes_keeps_the_classifier(work):
    assert nas("import-paddle", "tiny.pdparams", "--arch", "tiny.yaml", "--out", "coco2.pt", cwd=work).returncode == 0
    r = nas("retrain", "tiny.yaml", "--data", "coco_like", *TINY_TRAIN, "--epochs", "1", "--calib-images", "4",
            "--init", "coco2.pt", "--out", "ft_same", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "classifier included (80 classes)" in (work / "ft_same" / "train.log").read_text()


def test_backbone_only_starts_a_retrain_and_a_supernet(work):
    r = nas("import-paddle", "tiny_esnet.pdparams", "--arch", "tiny.yaml", "--backbone-only", "--out", "esnet.pt",
            cwd=work)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(work / "esnet.pt", weights_only=True)
    assert ckpt["meta"]["kind"] == "backbone" and all(k.startswith("backbone.") for k in ckpt["model"])
    r = nas("eval", "esnet.pt", "--data", "shapes", cwd=work)
    assert r.returncode == 2 and "holds a backbone only" in r.stderr
    r = nas("retrain", "tiny.yaml", "--data", "shapes", *TINY_TRAIN, "--epochs", "1", "--calib-images", "4",
            "--init", "esnet.pt", "--out", "bb", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "neck and head freshly initialised" in (work / "bb" / "train.log").read_text()
    write(work / "tiny_space.yaml", TINY_SPACE)
    r = nas("train-supernet", "--space", "tiny_space.yaml", "--data", "shapes", *TINY_TRAIN, "--epochs", "1",
            "--calib-images", "4", "--init", "esnet.pt", "--out", "sn", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written into the supernet's slices" in (work / "sn" / "train.log").read_text()


def test_init_file_of_another_architecture_is_refused(work):
    assert nas("import-paddle", "tiny.pdparams", "--arch", "tiny.yaml", "--out", "coco3.pt", cwd=work).returncode == 0
    r = nas("retrain", "picodet-s", "--data", "shapes", *TINY_TRAIN, "--init", "coco3.pt", "--out", "no", cwd=work)
    assert r.returncode == 2 and "holds another architecture than the one to train" in r.stderr
    r = nas("retrain", "tiny.yaml", "--data", "shapes", *TINY_TRAIN, "--init", "nothing.pt", "--out", "no", cwd=work)
    assert r.returncode == 2 and "expected scratch, supernet or a model file" in r.stderr


def test_the_opencv_resize_filter_is_opencvs_bicubic():
    """Imported models are evaluated with PaddleDetection's resize: OpenCV's INTER_CUBIC."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (.ci/run installs it for PaddleDetection)")
    from PIL import Image

    from picodet_nas.data.transforms import eval_resize

    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).resize((640, 480)))
    for image in (smooth, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)):
        for size in (320, 416, 800):
            ours, scale = eval_resize(image, size, "opencv")
            theirs = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
            assert scale == (size / 640, size / 480)
            assert np.abs(ours.astype(int) - theirs).max() <= 1 and (ours != theirs).mean() < 0.01


def test_supernet_starts_from_a_pretrained_subnet_exactly():
    """`embed_weights` puts a subnet's weights where `extract` finds them, leaving the rest."""
    import yaml

    from picodet_nas.space import SearchSpace
    from supernet.inherit import embed_weights
    from supernet.supernet import Supernet

    space = SearchSpace.from_dict(yaml.safe_load(TINY_SPACE))
    supernet = Supernet(space, num_classes=3)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    arch = space.base.replace(kernel_size=(3, 5) * 6 + (3,), channel_ratio=(1.0, 0.5) * 6 + (1.0,), head_convs=2)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in build_model(arch, 3).state_dict().items()}
    embed_weights(supernet, arch, state)
    extracted = supernet.extract(arch).state_dict()
    assert all(torch.equal(extracted[k], state[k]) for k in state if state[k].is_floating_point())
    changed = sum(int((supernet.state_dict()[k] != before[k]).sum()) for k in before if before[k].is_floating_point())
    assert 0 < changed < sum(v.numel() for v in before.values() if v.is_floating_point())


# ---- parity with PaddleDetection ------------------------------------------------------------
def paddle_missing() -> str | None:
    """Why PaddleDetection cannot be used here, or None."""
    for module, package in (("paddle", "paddlepaddle"), ("ppdet", "paddledet")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (.ci/run installs it)"
    return None


def reference(arch: Arch, out: Path, backbone_only: bool = False) -> dict[str, np.ndarray]:
    """PaddleDetection's weights (out/ref.pdparams) and outputs for `arch`, from a process of its own."""
    reason = paddle_missing()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).with_name("paddle_reference.py")), json.dumps(arch.to_dict()), str(out)]
    r = subprocess.run(cmd + (["--backbone-only"] if backbone_only else []), capture_output=True, text=True, env=env,
                       timeout=600)
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", r.stderr)
    if r.returncode != 0 and missing and missing.group(1).split(".")[0] not in OUR_PACKAGES:
        # a module PaddleDetection's import needs; one of ours missing is a failure, not a skip
        pytest.skip(f"PaddleDetection cannot be imported: no module named {missing.group(1)!r}")
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out / "outputs.npz"))


def _max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def _report(name: str, diffs: dict[str, float]) -> None:
    print(f"\n{name}: max abs difference to PaddleDetection: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


def _import(tmp_path: Path, spec: str, *extra: str) -> Path:
    from picodet_nas.cli.main import main

    out = tmp_path / "imported.pt"
    assert main(["import-paddle", str(tmp_path / "ref.pdparams"), "--arch", spec, *extra, "--out", str(out)]) == 0
    return out


def check_detector_parity(arch: Arch, spec: str, tmp_path: Path) -> None:
    from picodet_nas.engine.trained import load_trained_model
    from picodet_nas.postprocess import NMSConfig, decode, postprocess

    ref = reference(arch, tmp_path)
    model, meta, _ = load_trained_model(None, _import(tmp_path, spec))  # as nas eval rebuilds it from the file
    assert meta["arch"] == arch.to_dict()
    model.double()
    with torch.no_grad():
        feats = model.backbone(torch.from_numpy(ref["x"]))
        necks = model.neck(feats)
        outs = model.head(necks)
    c = model.num_classes
    diffs = {f"backbone[{i}]": _max_diff(f, ref[f"backbone_{i}"]) for i, f in enumerate(feats)}
    diffs.update({f"neck[{i}]": _max_diff(f, ref[f"neck_{i}"]) for i, f in enumerate(necks)})
    for i, o in enumerate(outs):
        raw = ref[f"raw_{i}"]
        diffs[f"cls[{i}]"] = _max_diff(torch.sigmoid(o[:, :c]), 1 / (1 + np.exp(-raw[:, :c])))
        diffs[f"dist[{i}]"] = _max_diff(o[:, c:], raw[:, c:])
    assert len(feats) == 3 and len(necks) == 4 and f"neck_{len(necks)}" not in ref
    cls_logits, reg_logits, priors = model.flatten(outs)
    scores, boxes = decode(cls_logits, reg_logits, priors)  # every prior, before NMS
    diffs["scores"] = _max_diff(scores, ref["scores"].transpose(0, 2, 1))
    diffs["boxes"] = _max_diff(boxes, ref["boxes"])
    name = Path(spec).name
    _report(name, diffs)
    assert max(diffs.values()) < TOL, diffs
    # After NMS: Paddle's whole eval pipeline against ours with the same settings (ppdet 2.6's
    # legacy PicoHead sends every prior, unclipped, to MultiClassNMS).
    dets = postprocess(cls_logits, reg_logits, priors, [o.shape[-2] * o.shape[-1] for o in outs],
                       (arch.input_size, arch.input_size), torch.from_numpy(ref["scale_factor"][:, [1, 0]]),
                       cfg=NMSConfig(nms_pre=None, clip=False))
    start, worst = 0, 0.0
    for (b, s, lab), n in zip(dets, ref["bbox_num"]):
        theirs = ref["bbox"][start:start + n]
        start += n
        ours = np.concatenate([lab.numpy()[:, None], s.numpy()[:, None], b.numpy()], axis=1)
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        ours, theirs = (r[np.lexsort((-r[:, 1], r[:, 0]))] for r in (ours, theirs))
        assert np.array_equal(ours[:, 0], theirs[:, 0])
        worst = max(worst, _max_diff(ours[:, 1:], theirs[:, 1:]))
    assert worst < TOL and start > 50, (worst, start)  # and NMS had real work on both images
    print(f"{name}: the {start} detections after NMS are Paddle's ({', '.join(map(str, ref['bbox_num']))} per "
          f"image; scores and boxes within {worst:.1e})")


@pytest.mark.parametrize("preset", ["picodet-s", "picodet-m", pytest.param("picodet-l", marks=pytest.mark.slow)])
def test_parity_with_paddledetection(preset, tmp_path):
    check_detector_parity(PRESETS[preset], preset, tmp_path)


def test_parity_of_a_searched_architecture(tmp_path):
    spec = tmp_path / "best.yaml"
    save_arch(SEARCHED, spec, extra={"space": {"name": "picodet_s_joint"}})
    check_detector_parity(SEARCHED, str(spec), tmp_path)


def test_parity_of_an_esnet_backbone_alone(tmp_path):
    arch = PRESETS["picodet-s"]
    ref = reference(arch, tmp_path, backbone_only=True)
    state = torch.load(_import(tmp_path, "picodet-s", "--backbone-only"), weights_only=True)["model"]
    model = build_model(arch)
    model.load_state_dict({**model.state_dict(), **state})
    model.double().eval()
    with torch.no_grad():
        feats = model.backbone(torch.from_numpy(ref["x"]))
    diffs = {f"backbone[{i}]": _max_diff(f, ref[f"backbone_{i}"]) for i, f in enumerate(feats)}
    _report("ESNet-S backbone", diffs)
    assert max(diffs.values()) < TOL, diffs
