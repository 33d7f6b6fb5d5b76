"""BN fidelity: a model trained at batch 8 must score in eval mode as it does with batch statistics.

picodet-s is trained from scratch for 200 steps (25 epochs of 64 shapes images at 96 px, batch 8,
the gradient norm clipped at 5 as in the shapes-curve recipe) with `--calib-images 0`, so that
model.pt keeps the running statistics of training; the same
weights are then given exact BN statistics (`BNCalibration`, what `nas retrain` does by default).
The figure compared is the detection loss (SimOTA, VFL + GIoU + DFL) on the training images with
the evaluation preprocessing, in batches of 8: in eval mode, and with every BN normalising with
its batch's own statistics (how the network was trained).

Measured on this model: batch statistics 2.051; eval mode with the running statistics 3.253
(1.59x); eval mode with the statistics recalibrated on augmented training crops (the default)
2.065 (1.007x), and on whole images with the evaluation preprocessing (before) 2.103 (1.025x).
Those figures were taken without clipping on an Intel Xeon host. On an AMD EPYC host (session
19) the same unclipped training gave 2.060 / 12.439 / 2.946 (recalibrated 1.43x): a model that
exact statistics no longer rescue. With the clipping there: 2.032 / 4.919 / 2.002 (0.985x).
The tolerance below, 1.10x, is the recalibrated figure plus a margin for float and platform
differences.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine_helpers import nas, shapes
from picodet_nas.data import CocoDetection, build_eval_loader, resolve_data
from picodet_nas.engine.bn_calibration import BNCalibration
from picodet_nas.engine.trained import load_trained_model
from picodet_nas.losses import PicoDetLoss
from picodet_nas.models.detector import flatten_outputs

SIZE = 96
RECALIBRATED_TOLERANCE = 1.10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    shapes(root / "data", train=64, val=8, size=128, seed=2)
    r = nas("retrain", "picodet-s", "--data", "data", "--input-size", str(SIZE), "--epochs", "25", "--batch-size", "8",
            "--lr", "0.05", "--warmup-iters", "20", "--eval-interval", "25", "--workers", "0", "--device", "cpu",
            "--no-measure-latency", "--calib-images", "0", "--grad-clip", "5", "--out", "run", cwd=root, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    paths = resolve_data(root / "data")
    return root / "run" / "model.pt", CocoDetection(paths.train_ann, paths.train_images)


def batch_statistics(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean = m.running_var = None  # normalise with each batch's own statistics
            m.track_running_stats = False
    return model


@torch.no_grad()
def mean_loss(model: torch.nn.Module, dataset: CocoDetection) -> float:
    model.eval()
    loss_fn = PicoDetLoss(dataset.num_classes)
    index = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    total, batches = 0.0, 0
    for images, metas in build_eval_loader(dataset, SIZE, 8, 0):
        boxes, labels = [], []
        for meta in metas:
            sample = dataset[index[meta["image_id"]]]
            sx, sy = meta["scale_factor"]
            b = torch.from_numpy(sample["boxes"]).clone()
            b[:, 0::2] *= sx
            b[:, 1::2] *= sy
            boxes.append(b)
            labels.append(torch.from_numpy(sample["labels"]))
        loss, _ = loss_fn(*flatten_outputs(model(images), dataset.num_classes), boxes, labels)
        total += loss.item()
        batches += 1
    return total / batches


def test_recalibrated_eval_mode_matches_batch_statistics(trained):
    model_file, train_set = trained
    running, _, _ = load_trained_model("picodet-s", model_file, SIZE)
    recalibrated = copy.deepcopy(running)
    BNCalibration(train_set, 256)(recalibrated, SIZE)
    reference = mean_loss(batch_statistics(copy.deepcopy(running)), train_set)
    with_running, with_recalibrated = mean_loss(running, train_set), mean_loss(recalibrated, train_set)
    print(f"loss: batch statistics {reference:.3f}, running {with_running:.3f}, recalibrated {with_recalibrated:.3f}")
    assert with_recalibrated <= RECALIBRATED_TOLERANCE * reference
    assert with_recalibrated < with_running
