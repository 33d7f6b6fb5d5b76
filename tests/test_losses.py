"""Each loss against numbers worked out by hand (plain math, not this package's code)."""

import math

import pytest
import torch

from picodet_nas.losses import PicoDetLoss, distribution_focal_loss, giou_loss, varifocal_loss

LN2, LN8 = math.log(2), math.log(8)


def test_varifocal_loss_hand_values():
    # x = 0 (p = 1/2) with target 0.5: weight 0.5, BCE = ln 2.
    # x = ln 3 (p = 3/4) with target 0: weight 0.75 * (3/4)^2, BCE = -ln(1/4) = ln 4.
    logits = torch.tensor([0.0, math.log(3)])
    targets = torch.tensor([0.5, 0.0])
    first = 0.5 * LN2
    second = 0.75 * 0.75 ** 2 * math.log(4)
    assert varifocal_loss(logits, targets).item() == pytest.approx(first + second, rel=1e-6)
    assert varifocal_loss(logits, targets, reduction="none").tolist() == pytest.approx(
        [first, second], rel=1e-6)
    # Without IoU weighting the positive weight is 1.
    assert varifocal_loss(logits, targets, iou_weighted=False).item() == pytest.approx(
        LN2 + second, rel=1e-6)


def test_giou_loss_hand_values():
    # [0,0,2,2] vs [1,1,3,3]: IoU 1/7, hull 9, union 7 -> GIoU 1/7 - 2/9 = -5/63.
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    assert giou_loss(pred, target, reduction="none").tolist() == pytest.approx([68 / 63, 0.0], abs=1e-6)
    weight = torch.tensor([0.5, 3.0])
    assert giou_loss(pred, target, weight=weight).item() == pytest.approx(34 / 63, rel=1e-6)


def test_distribution_focal_loss_hand_values():
    # Softmax of [0, 0, ln 3, 0, 0, 0, 0, 0]: 3/10 on bin 2, 1/10 elsewhere.
    # y = 1.25: 0.75 * CE(bin 1) + 0.25 * CE(bin 2) = 0.75 ln 10 + 0.25 ln(10/3).
    # y = 6.9 on uniform logits: CE is ln 8 for every bin, weights sum to 1.
    logits = torch.zeros(2, 8)
    logits[0, 2] = math.log(3)
    target = torch.tensor([1.25, 6.9])
    first = 0.75 * math.log(10) + 0.25 * math.log(10 / 3)
    assert distribution_focal_loss(logits, target, reduction="none").tolist() == pytest.approx(
        [first, LN8], rel=1e-5)
    weight = torch.tensor([2.0, 0.5])
    assert distribution_focal_loss(logits, target, weight=weight).item() == pytest.approx(
        2 * first + 0.5 * LN8, rel=1e-5)


# A one-prior scene: prior (4, 4) at stride 8, GT [0, 0, 8, 8] class 0, two classes.
# In stride units the prior is (0.5, 0.5) and the GT [0, 0, 1, 1]. Zero box logits give
# the expected distance 3.5 per side: predicted box [-3, -3, 4, 4] (area 49) contains the
# GT, so IoU = GIoU = 1/49. SimOTA: the single candidate, k = max(1, floor(1/49)) = 1.
# DFL targets are 0.5 per side: half on bin 0, half on bin 1, CE = ln 8 each.
PRIORS = torch.tensor([[4.0, 4.0, 8.0, 8.0]])
GT_BOX = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
GT_LABEL = torch.tensor([0])
T = 1 / 49


def bce(p, t):
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_picodet_loss_one_positive_and_one_empty_image():
    # Class logits (0, ln 1/3): p = (1/2, 1/4), weight w = max p = 1/2.
    cls_logits = torch.tensor([[[0.0, math.log(1 / 3)]]]).repeat(2, 1, 1)
    reg_logits = torch.zeros(2, 1, 32)
    loss = PicoDetLoss(num_classes=2)
    total, parts = loss(cls_logits, reg_logits, PRIORS, [GT_BOX, torch.zeros(0, 4)],
                        [GT_LABEL, torch.zeros(0, dtype=torch.long)])

    neg_quarter = 0.75 * 0.25 ** 2 * bce(0.25, 0)       # class 1, p = 1/4, target 0
    image1 = T * bce(0.5, T) + neg_quarter               # positive at class 0, target 1/49
    image2 = 0.75 * 0.5 ** 2 * bce(0.5, 0) + neg_quarter  # no GT: all negative
    vfl = (image1 + image2) / 2                           # num_total_pos = 1 + max(0, 1)
    # avg_factor = max(sum w, 1) = max(1/2, 1) = 1.
    giou = 2.0 * 0.5 * (1 - T) / 1
    dfl = 0.25 * (4 * 0.5 * LN8) / 4 / 1
    assert parts["num_pos"] == 1.0
    assert parts["loss_vfl"] == pytest.approx(vfl, rel=1e-5)
    assert parts["loss_giou"] == pytest.approx(giou, rel=1e-5)
    assert parts["loss_dfl"] == pytest.approx(dfl, rel=1e-5)
    assert total.item() == pytest.approx(vfl + giou + dfl, rel=1e-5)


def test_picodet_loss_avg_factor_above_one():
    # Both images hold the GT; class logits (ln 9, ln 1/3): p = (9/10, 1/4), w = 9/10
    # each, avg_factor = 1.8.
    cls_logits = torch.tensor([[[math.log(9), math.log(1 / 3)]]]).repeat(2, 1, 1)
    reg_logits = torch.zeros(2, 1, 32)
    total, parts = PicoDetLoss(num_classes=2)(
        cls_logits, reg_logits, PRIORS, [GT_BOX, GT_BOX], [GT_LABEL, GT_LABEL])

    per_image = T * bce(0.9, T) + 0.75 * 0.25 ** 2 * bce(0.25, 0)
    vfl = 2 * per_image / 2
    giou = 2.0 * (2 * 0.9 * (1 - T)) / 1.8
    dfl = 0.25 * (2 * 4 * 0.9 * LN8) / 4 / 1.8
    assert parts["num_pos"] == 2.0
    assert parts["loss_vfl"] == pytest.approx(vfl, rel=1e-5)
    assert parts["loss_giou"] == pytest.approx(giou, rel=1e-5)
    assert parts["loss_dfl"] == pytest.approx(dfl, rel=1e-5)
    assert total.item() == pytest.approx(vfl + giou + dfl, rel=1e-5)


def test_picodet_loss_without_positives_is_finite_and_backpropagates():
    priors = torch.tensor([[4.0, 4.0, 8.0, 8.0], [12.0, 4.0, 8.0, 8.0]])
    cls_logits = torch.randn(2, 2, 3, requires_grad=True)
    reg_logits = torch.randn(2, 2, 32, requires_grad=True)
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    total, parts = PicoDetLoss(num_classes=3)(
        cls_logits, reg_logits, priors, [empty_boxes, empty_boxes], [empty_labels, empty_labels])
    total.backward()
    assert torch.isfinite(total)
    assert parts["num_pos"] == 0.0 and parts["loss_giou"] == 0.0 and parts["loss_dfl"] == 0.0
    assert torch.isfinite(cls_logits.grad).all()
    assert torch.equal(reg_logits.grad, torch.zeros_like(reg_logits))


def test_picodet_loss_gradients_reach_both_branches():
    cls_logits = torch.zeros(1, 1, 2, requires_grad=True)
    reg_logits = torch.zeros(1, 1, 32, requires_grad=True)
    total, _ = PicoDetLoss(num_classes=2)(cls_logits, reg_logits, PRIORS, [GT_BOX], [GT_LABEL])
    total.backward()
    assert cls_logits.grad.abs().sum() > 0
    assert reg_logits.grad.abs().sum() > 0


def test_picodet_loss_rejects_priors_of_another_layout():
    with pytest.raises(ValueError, match="strides"):
        PicoDetLoss(num_classes=2)(torch.zeros(1, 1, 2), torch.zeros(1, 1, 32),
                                   torch.tensor([[4.0, 4.0, 12.0, 12.0]]), [GT_BOX], [GT_LABEL])


def test_inplace_distillation_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    from picodet_nas.losses import inplace_distillation_loss

    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 3 + 32, h, h, generator=g) for h in (8, 4, 2, 1)]
    assert inplace_distillation_loss([t.clone() for t in teacher], teacher, 3).item() == pytest.approx(0.0, abs=1e-5)
    student = [(t + 0.5 * torch.randn(t.shape, generator=g)).requires_grad_() for t in teacher]
    loss = inplace_distillation_loss(student, teacher, 3)
    assert loss.item() > 0.01
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    # a teacher at twice the input size: its maps are resized to the student's (bilinear, which undoes a
    # nearest-neighbour doubling exactly)
    big = [torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest") for t in teacher]
    assert inplace_distillation_loss([t.clone() for t in teacher], big, 3).item() == pytest.approx(0.0, abs=1e-5)
