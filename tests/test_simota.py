"""SimOTA on hand-made scenes where the candidates, dynamic k and conflicts are known."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from picodet_nas.assign import SimOTAAssigner
from picodet_nas.ops.boxes import bbox_overlaps, make_priors


def priors_at(points, stride=8.0):
    points = torch.tensor(points, dtype=torch.float32)
    return torch.cat([points, torch.full_like(points, stride)], dim=1)


def scores_for(num_priors, p_gt_class=0.5, p_other=0.1):
    scores = torch.full((num_priors, 2), p_other)
    scores[:, 0] = p_gt_class
    return scores


# One GT [0, 0, 80, 40], class 0, center (40, 20). Center square at stride 8:
# +-2.5 * 8 = +-20 -> x in (20, 60), y in (0, 40).
GT = torch.tensor([[0.0, 0.0, 80.0, 40.0]])
LABELS = torch.tensor([0])
SCENE_PRIORS = [
    (44, 20),   # 0: box and center square
    (36, 20),   # 1: box and center square
    (10, 20),   # 2: inside the box only (x < 20): candidate, but +1e8 cost
    (200, 200),  # 3: outside both: not a candidate
    (52, 36),   # 4: box and center square
    (28, 12),   # 5: box and center square
]
SCENE_PREDS = torch.tensor([
    [0.0, 0.0, 80.0, 40.0],   # IoU 1
    [0.0, 0.0, 40.0, 40.0],   # IoU 1600 / 3200 = 0.5
    [0.0, 0.0, 80.0, 40.0],   # IoU 1 (but not in the center square)
    [0.0, 0.0, 80.0, 40.0],   # IoU 1 (not a candidate at all)
    [0.0, 0.0, 48.0, 40.0],   # IoU 1920 / 3200 = 0.6
    [0.0, 0.0, 8.0, 40.0],    # IoU 320 / 3200 = 0.1
])


def test_dynamic_k_and_candidate_rules():
    assigner = SimOTAAssigner(num_classes=2)
    result = assigner.assign(scores_for(6), priors_at(SCENE_PRIORS), SCENE_PREDS, GT, LABELS)
    # Candidates 0, 1, 2, 4, 5 (prior 3 is outside): IoU sum 1 + 0.5 + 1 + 0.6 + 0.1 = 3.2,
    # so k = 3. Costs (p = 0.5 on the GT class, the other class identical for all):
    # t*ln2 + 6*(1 - t) -> prior 0: 0.69, prior 4: 2.82, prior 1: 3.35, prior 5: 5.47,
    # prior 2: 1e8 + ... . The three cheapest are 0, 4, 1.
    assert result.num_pos == 3
    assert result.pos_inds.tolist() == [0, 1, 4]
    assert result.assigned_gt_inds.tolist() == [0, 0, -1, -1, 0, -1]
    assert result.assigned_labels.tolist() == [0, 0, 2, 2, 0, 2]
    assert torch.equal(result.assigned_bboxes[[0, 1, 4]], GT.expand(3, 4))
    assert torch.equal(result.assigned_bboxes[[2, 3, 5]], torch.zeros(3, 4))
    assert torch.allclose(result.pos_ious, torch.tensor([1.0, 0.5, 0.6]))


def test_dynamic_k_is_at_least_one():
    assigner = SimOTAAssigner(num_classes=2)
    preds = SCENE_PREDS.clone()
    preds[:, 2] = 8.0  # every prediction now covers 320 / 3200 of the GT: IoU sum 0.5
    result = assigner.assign(scores_for(6), priors_at(SCENE_PRIORS), preds, GT, LABELS)
    # All in_both candidates tie on IoU; the cost is equal, the lowest index wins.
    assert result.pos_inds.tolist() == [0]


def test_not_in_both_candidate_can_still_be_taken():
    # Only priors 2 (box only) and 3 (outside) exist: prior 2 is the sole candidate,
    # its cost carries +1e8 but it is still the cheapest, so k = 1 takes it (as in the
    # reference, the penalty ranks, it does not forbid).
    assigner = SimOTAAssigner(num_classes=2)
    result = assigner.assign(scores_for(2), priors_at([SCENE_PRIORS[2], SCENE_PRIORS[3]]),
                             SCENE_PREDS[[2, 3]], GT, LABELS)
    assert result.pos_inds.tolist() == [0]


def test_conflict_goes_to_lower_cost_gt():
    # Prior (28, 20) lies in both GT boxes and both center squares; each GT has k = 1
    # and this is its only candidate, so both take it and the cheaper GT keeps it.
    gts = torch.tensor([[0.0, 0.0, 40.0, 40.0], [16.0, 0.0, 56.0, 40.0]])
    labels = torch.tensor([0, 1])
    priors = priors_at([(28, 20)])
    scores = torch.tensor([[0.5, 0.5]])
    assigner = SimOTAAssigner(num_classes=2)

    near_a = torch.tensor([[4.0, 0.0, 44.0, 40.0]])  # IoU 1440/1760 with A, 1120/2080 with B
    result = assigner.assign(scores, priors, near_a, gts, labels)
    assert result.assigned_gt_inds.tolist() == [0]
    assert result.assigned_labels.tolist() == [0]
    assert math.isclose(result.pos_ious.item(), 1440 / 1760, rel_tol=1e-6)

    near_b = torch.tensor([[14.0, 0.0, 54.0, 40.0]])
    result = assigner.assign(scores, priors, near_b, gts, labels)
    assert result.assigned_gt_inds.tolist() == [1]
    assert result.assigned_labels.tolist() == [1]
    assert torch.equal(result.assigned_bboxes, gts[1:])


def test_no_gt_and_no_candidates_are_all_background():
    assigner = SimOTAAssigner(num_classes=2)
    priors = priors_at(SCENE_PRIORS)
    empty = assigner.assign(scores_for(6), priors, SCENE_PREDS, torch.zeros(0, 4),
                            torch.zeros(0, dtype=torch.long))
    far = assigner.assign(scores_for(6), priors, SCENE_PREDS,
                          torch.tensor([[1000.0, 1000.0, 1001.0, 1001.0]]), LABELS)
    for result in (empty, far):
        assert result.num_pos == 0
        assert result.assigned_gt_inds.tolist() == [-1] * 6
        assert result.assigned_labels.tolist() == [2] * 6
        assert torch.equal(result.assigned_bboxes, torch.zeros(6, 4))


def test_vfl_cost_matches_direct_formula():
    """The O(V*n) cost equals the reference's VFL on probabilities with a full [V*n, C]
    target (F.binary_cross_entropy, IoU at the GT class), summed over classes."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 4, generator=g)
    ious = torch.rand(7, 3, generator=g)
    ious[0, 1] = 0.0
    ious[4, 2] = 0.0
    gt_labels = torch.tensor([2, 0, 2])
    cost = SimOTAAssigner(num_classes=4)._vfl_cost(scores, ious, gt_labels)

    pred = scores[:, None, :].expand(7, 3, 4)
    target = torch.zeros(7, 3, 4)
    target[:, torch.arange(3), gt_labels] = ious
    weight = torch.where(target > 0, target, 0.75 * (pred - target).abs().pow(2.0))
    direct = (F.binary_cross_entropy(pred, target, reduction="none") * weight).sum(-1)
    assert torch.allclose(cost, direct, atol=1e-6)



def reference_simota(scores, priors, boxes, gts, labels, radius=2.5, topk=10, iou_weight=6.0):
    """A literal transcription of Paddle release/2.3 SimOTAAssigner (use_vfl=True): the
    full [V*n, C] VFL target, a top-k per GT in a Python loop, numpy conflict resolution.
    Returns assigned_gt_inds with -1 for background."""
    n, num_classes = gts.shape[0], scores.shape[1]
    x, y, sx = priors[:, 0:1], priors[:, 1:2], priors[:, 2:3]
    in_gt = torch.stack([x - gts[:, 0], y - gts[:, 1], gts[:, 2] - x, gts[:, 3] - y], 1).min(1).values > 0
    cx, cy = (gts[:, 0] + gts[:, 2]) / 2, (gts[:, 1] + gts[:, 3]) / 2
    in_ct = torch.stack([x - (cx - radius * sx), y - (cy - radius * sx),
                         (cx + radius * sx) - x, (cy + radius * sx) - y], 1).min(1).values > 0
    valid = (in_gt.any(1) | in_ct.any(1)).nonzero().squeeze(1)
    both = in_gt[valid] & in_ct[valid]
    num_valid = len(valid)
    ious = bbox_overlaps(boxes[valid], gts)
    pred = scores[valid].unsqueeze(1).repeat(1, n, 1).reshape(-1, num_classes)
    target = torch.zeros_like(pred)
    target[torch.arange(num_valid * n), labels.repeat(num_valid)] = ious.reshape(-1)
    weight = target * (target > 0) + 0.75 * (pred - target).abs().pow(2) * (target <= 0)
    vfl = (F.binary_cross_entropy(pred, target, reduction="none") * weight).sum(1).reshape(num_valid, n)
    giou_cost = 1 - bbox_overlaps(boxes[valid], gts, mode="giou")
    cost = (vfl + giou_cost * iou_weight + (~both).to(vfl.dtype) * 1e8).numpy()

    matching = np.zeros((num_valid, n))
    ks = ious.topk(min(topk, num_valid), 0).values.sum(0).long().clamp(min=1)
    for j in range(n):
        matching[np.argsort(cost[:, j], kind="stable")[:ks[j]], j] = 1
    multi = matching.sum(1) > 1
    best = np.argmin(cost[multi], 1)
    matching[multi] = 0
    matching[multi, best] = 1
    fg = matching.sum(1) > 0
    out = -np.ones(priors.shape[0], dtype=np.int64)
    out[valid.numpy()[fg]] = matching[fg].argmax(1)
    return out


def test_matches_literal_reference_on_random_scenes():
    g = torch.Generator().manual_seed(0)
    priors = make_priors([(20, 20), (10, 10), (5, 5), (3, 3)], (8, 16, 32, 64))
    num_classes = 5
    assigner = SimOTAAssigner(num_classes=num_classes)
    total_pos = 0
    for _ in range(40):
        n = int(torch.randint(1, 8, (1,), generator=g))
        corner = torch.rand(n, 2, generator=g) * 140
        gts = torch.cat([corner, corner + torch.rand(n, 2, generator=g) * 100 + 4], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        scores = torch.rand(priors.shape[0], num_classes, generator=g)
        dist = torch.rand(priors.shape[0], 4, generator=g) * 5 * priors[:, 2:3]
        boxes = torch.cat([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], 1)
        expected = reference_simota(scores, priors, boxes, gts, labels)
        got = assigner.assign(scores, priors, boxes, gts, labels).assigned_gt_inds
        assert got.tolist() == expected.tolist()
        total_pos += int((expected >= 0).sum())
    assert total_pos > 200  # the scenes do exercise the matching
