"""INT8 deployment: the ONNX wrapper that evaluates an exported model through the one
evaluation path, the quantized export of a retrained model, and its bad inputs."""

from __future__ import annotations

import pytest
import torch

from engine_helpers import nas, one_line_error
from picodet_nas.arch import save_arch
from picodet_nas.engine.int8_export import OnnxPicoDet, export_int8
from picodet_nas.export import export_onnx
from picodet_nas.models import build_model
from picodet_nas.space import load_space

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_space("quickstart").smallest(), NUM_CLASSES).eval()


def test_a_float_export_run_by_onnx_runtime_gives_the_models_own_outputs(model, tmp_path):
    """`OnnxPicoDet` on the float raw export: the flattened class logits (recovered from the
    exported sigmoid scores), box distributions and priors equal the PyTorch model's, so an
    ONNX model is scored by exactly the post-processing and evaluation of a PyTorch one."""
    size = 160
    path = export_onnx(model, tmp_path / "raw.onnx", input_size=size, dynamic_batch=False)
    onnx_model = OnnxPicoDet(path, NUM_CLASSES)
    x = torch.randn(3, 3, size, size)  # a batch of 3 through a batch-1 file: image by image
    with torch.no_grad():
        want = model.flatten(model(x))
    got = onnx_model.flatten(onnx_model(x))
    for w, g in zip(want, got):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=2e-4, rtol=1e-4)


def test_the_int8_export_is_quantized_and_runs(model, tmp_path):
    import onnx

    from picodet_nas.data import CocoDetection, make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", train=6, val=2, image_size=160, seed=0)
    train = CocoDetection(data / "annotations" / "instances_train.json", data / "images")
    path = export_int8(model, 160, train, tmp_path, calib_images=4)
    assert path.name == "model.int8.onnx" and {"QuantizeLinear", "DequantizeLinear"} <= {
        n.op_type for n in onnx.load(str(path)).graph.node}
    outs = OnnxPicoDet(path, NUM_CLASSES)(torch.randn(1, 3, 160, 160))
    assert [tuple(o.shape[-2:]) for o in outs] == [(20, 20), (10, 10), (5, 5), (3, 3)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_int8_calibration_images_without_the_export_are_refused(tmp_path):
    save_arch(load_space("quickstart").smallest(), tmp_path / "a.yaml")
    r = nas("retrain", "a.yaml", "--data", "nowhere", "--int8-calib-images", "8", cwd=tmp_path)
    assert r.returncode == 2 and "--int8-calib-images calibrates --export-int8" in one_line_error(r)
    r = nas("retrain", "a.yaml", "--data", "nowhere", "--export-int8", "--int8-calib-images", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--int8-calib-images must be at least 1" in one_line_error(r)
