"""PaddleDetection's own legacy PicoDet, built with `ppdet.modeling` from an `Arch`, for the
parity tests of `picodet_nas.paddle_import`. Importing this module needs `paddle` and `ppdet`;
the tests run it as a script in a process of its own (`reference_outputs`), so that Paddle
never shares the test process with PyTorch.

The modules are constructed directly (not from a YAML config) with the values of the legacy
PicoDet configs: ESNet with hard-swish and feature maps 4, 11, 14; CSP-PAN with depthwise
convolutions, one CSP block and 4 outputs; PicoHead with a shared cls/reg tower (PicoFeat,
5x5 depthwise), 4 strides, reg_max 7, cell offset 0.5, and MultiClassNMS at score 0.025,
NMS IoU 0.6, nms_top_k 1000, keep_top_k 100.
"""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle
    from ppdet.modeling.architectures.picodet import PicoDet as PaddlePicoDet
    from ppdet.modeling.assigners.simota_assigner import SimOTAAssigner
    from ppdet.modeling.backbones.esnet import ESNet as PaddleESNet
    from ppdet.modeling.heads.pico_head import PicoFeat, PicoHead
    from ppdet.modeling.layers import MultiClassNMS
    from ppdet.modeling.losses.gfocal_loss import DistributionFocalLoss
    from ppdet.modeling.losses.iou_loss import GIoULoss
    from ppdet.modeling.losses.varifocal_loss import VarifocalLoss
    from ppdet.modeling.necks.csp_pan import CSPPAN as PaddleCSPPAN

from picodet_nas.arch import REG_MAX, STRIDES, Arch

paddle.set_device("cpu")
CLASS_BIAS = -5.5  # logit of unit spread: about 3% of the (prior, class) pairs above the 0.025 threshold


def build_esnet(arch: Arch) -> "paddle.nn.Layer":
    if set(arch.kernel_size) != {3}:
        raise ValueError("ppdet's ESNet has 3x3 depthwise kernels only")
    return PaddleESNet(scale=arch.scale, act="hard_swish", feature_maps=[4, 11, 14],
                       channel_ratio=list(arch.channel_ratio))


def build_picodet(arch: Arch, num_classes: int = 80) -> "paddle.nn.Layer":
    backbone = build_esnet(arch)
    n = arch.neck_channels
    neck = PaddleCSPPAN(in_channels=[s.channels for s in backbone.out_shape], out_channels=n, kernel_size=5,
                        num_features=4, num_csp_blocks=1, use_depthwise=True, act="hard_swish",
                        spatial_scales=[0.125, 0.0625, 0.03125])
    feat = PicoFeat(feat_in=n, feat_out=n, num_fpn_stride=len(STRIDES), num_convs=arch.head_convs, norm_type="bn",
                    share_cls_reg=True, act="hard_swish")
    nms = MultiClassNMS(score_threshold=0.025, nms_top_k=1000, keep_top_k=100, nms_threshold=0.6)
    head = PicoHead(conv_feat=feat, num_classes=num_classes, fpn_stride=list(STRIDES), prior_prob=0.01,
                    loss_class=VarifocalLoss(use_sigmoid=True, iou_weighted=True, loss_weight=1.0),
                    loss_dfl=DistributionFocalLoss(loss_weight=0.25), loss_bbox=GIoULoss(loss_weight=2.0),
                    assigner=SimOTAAssigner(candidate_topk=10, iou_weight=6, num_classes=num_classes),
                    reg_max=REG_MAX, feat_in_chan=n, nms=nms, cell_offset=0.5)
    return PaddlePicoDet(backbone, neck, head)


def _bn_layers(layer: "paddle.nn.Layer") -> list:
    return [m for m in layer.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]


def _forward_train(layer: "paddle.nn.Layer", images: np.ndarray) -> None:
    """One training-mode pass of an ESNet or a whole PicoDet (the head without its loss)."""
    x = {"image": paddle.to_tensor(images)}
    if isinstance(layer, PaddlePicoDet):
        layer.head.forward_train(layer.neck(layer.backbone(x)))
    else:
        layer(x)


def randomize(layer: "paddle.nn.Layer", images: np.ndarray, seed: int = 0, num_classes: int = 80) -> None:
    """Random weights and non-trivial BN statistics, with signals that still depend on the image.

    Weights are random at a unit-variance scale, BN affines random around 1 and 0. Purely random
    running statistics shrink the signal at every layer until the deep features hardly depend on
    the image (C5 then varies 1e-4 times as much between images as across channels), which would
    hide mistakes; so each BN's running mean and variance are first set to the statistics of a
    training-mode pass over `images` and then perturbed at random (mean shifted by up to 0.1 of a
    standard deviation, variance scaled by 0.9 to 1.1: in eval mode nothing renormalises, and
    larger factors compound over the ~60 BN layers into outputs hundreds of times too large).
    The class logits are then spread as `_spread_class_logits` says. Leaves `layer` in eval mode.
    """
    rng = np.random.default_rng(seed)
    for name, tensor in layer.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith(("_mean", "_variance", "distribution_project.project")):
            continue
        if len(shape) == 4:  # conv weight: unit-variance outputs on unit-variance inputs
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[1] * shape[2] * shape[3]), shape)
        elif name.endswith(".weight"):  # BN scale
            value = rng.uniform(0.5, 1.5, shape)
        else:  # BN shifts, conv biases, unused ScaleReg factors
            value = rng.normal(0.0, 0.2, shape)
        tensor.set_value(value.astype(np.float32))
    bns = _bn_layers(layer)
    momenta = [bn._momentum for bn in bns]
    for bn in bns:
        bn._momentum = 0.0  # the running statistics become those of the next batch
    layer.train()
    with paddle.no_grad():
        _forward_train(layer, images)
    layer.eval()
    for bn, momentum in zip(bns, momenta):
        bn._momentum = momentum
        mean, var = bn._mean.numpy(), bn._variance.numpy()
        bn._mean.set_value((mean + 0.1 * np.sqrt(var) * rng.uniform(-1, 1, mean.shape)).astype(np.float32))
        bn._variance.set_value((var * rng.uniform(0.9, 1.1, var.shape)).astype(np.float32))
    if isinstance(layer, PaddlePicoDet):
        _spread_class_logits(layer, images, num_classes, rng)


def _spread_class_logits(layer: "paddle.nn.Layer", images: np.ndarray, num_classes: int,
                         rng: np.random.Generator) -> None:
    """Scale each level's class rows of the output conv to logits of unit spread on `images`,
    and set the class biases around CLASS_BIAS: a few percent of the (prior, class) pairs then
    score above 0.025, and the best stay far from saturation (scores near 1 would tie)."""
    with paddle.no_grad():
        necks = layer.neck(layer.backbone({"image": paddle.to_tensor(images)}))
        for i, f in enumerate(necks):
            feat, _ = layer.head.conv_feat(f, i)
            conv = layer.head.head_cls_list[i]
            weight, bias = conv.weight.numpy(), conv.bias.numpy()
            spread = (conv(feat).numpy()[:, :num_classes] - bias[:num_classes, None, None]).std()
            weight[:num_classes] /= spread
            bias[:num_classes] = CLASS_BIAS + rng.normal(0.0, 0.3, num_classes)
            conv.weight.set_value(weight.astype(np.float32))
            conv.bias.set_value(bias.astype(np.float32))


def images(size: int, n: int, seed: int) -> np.ndarray:
    """Random images, already normalised: float32 [n, 3, size, size]."""
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


SCALE_FACTOR = np.array([[0.5, 0.625], [1.0, 1.0]])  # per image (y, x) = input / original size


def reference_outputs(arch: Arch, out_dir: str, backbone_only: bool = False) -> None:
    """Build PaddleDetection's network for `arch` with random weights, save them as
    `ref.pdparams`, and write its outputs on two random images, computed in float64, to
    `outputs.npz`: the input `x`, `backbone_<i>`, and for a detector `neck_<i>`, `raw_<i>` (the
    output conv of level i: class logits then box-distribution logits), `scores` [B, C, N] and
    `boxes` [B, N, 4] of its eval head, and `bbox` / `bbox_num` of its whole eval pipeline
    (MultiClassNMS rows: label, score, x1, y1, x2, y2 in original-image pixels)."""
    from pathlib import Path

    out = Path(out_dir)
    layer = build_esnet(arch) if backbone_only else build_picodet(arch)
    randomize(layer, images(arch.input_size, 4, seed=1))
    paddle.save(layer.state_dict(), str(out / "ref.pdparams"))
    layer.to(dtype="float64")
    x = images(arch.input_size, 2, seed=0).astype(np.float64)
    result = {"x": x, "scale_factor": SCALE_FACTOR}
    feats = (layer if backbone_only else layer.backbone)({"image": paddle.to_tensor(x)})
    result.update({f"backbone_{i}": f.numpy() for i, f in enumerate(feats)})
    if not backbone_only:
        necks = layer.neck(feats)
        result.update({f"neck_{i}": f.numpy() for i, f in enumerate(necks)})
        for i, f in enumerate(necks):
            cls_feat, _ = layer.head.conv_feat(f, i)
            result[f"raw_{i}"] = layer.head.head_cls_list[i](cls_feat).numpy()
        scores, boxes = layer.head(necks)
        result.update(scores=scores.numpy(), boxes=boxes.numpy())
        det = layer({"image": paddle.to_tensor(x), "im_shape": paddle.to_tensor(np.full((2, 2), float(arch.input_size))),
                     "scale_factor": paddle.to_tensor(SCALE_FACTOR)})
        result.update(bbox=det["bbox"].numpy(), bbox_num=det["bbox_num"].numpy())
    np.savez(out / "outputs.npz", **result)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="PaddleDetection's legacy PicoDet: weights and outputs")
    parser.add_argument("arch", help="the architecture as JSON (Arch.to_dict())")
    parser.add_argument("out", help="folder for ref.pdparams and outputs.npz")
    parser.add_argument("--backbone-only", action="store_true")
    args = parser.parse_args()
    reference_outputs(Arch.from_dict(json.loads(args.arch)), args.out, args.backbone_only)
