"""Box ops and NMS: hand-made values, a plain reference loop, and onnxruntime's
NonMaxSuppression (the operator the exported model uses)."""

import math
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # must be set before onnxruntime loads

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from picodet_nas.ops.boxes import (
    bbox2distance,
    bbox_overlaps,
    box_area,
    box_iou,
    distance2bbox,
    integral,
    make_priors,
    xyxy_to_xywh,
)
from picodet_nas.ops.nms import multiclass_nms, nms


# --------------------------------------------------------------------------- boxes

def test_iou_and_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0],   # inter 1, union 7, hull 9
                      [2.0, 0.0, 3.0, 1.0],   # touching at x=2: inter 0, union 5, hull 6
                      [0.0, 0.0, 2.0, 2.0]])  # identical
    iou = torch.tensor([[1 / 7, 0.0, 1.0]])
    giou = torch.tensor([[1 / 7 - 2 / 9, 0.0 - 1 / 6, 1.0]])
    assert torch.allclose(bbox_overlaps(a, b), iou)
    assert torch.allclose(box_iou(a, b), iou)
    assert torch.allclose(bbox_overlaps(a, b, mode="giou"), giou)
    assert torch.allclose(bbox_overlaps(a.expand(3, 4), b, mode="giou", is_aligned=True), giou[0])
    assert torch.allclose(box_area(b), torch.tensor([4.0, 1.0, 4.0]))


def test_overlaps_batched_shapes_and_degenerate_boxes():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 5, 4, generator=g) * 10
    a[..., 2:] += a[..., :2]
    b = torch.rand(2, 7, 4, generator=g) * 10
    b[..., 2:] += b[..., :2]
    pair = bbox_overlaps(a, b, mode="giou")
    assert pair.shape == (2, 5, 7)
    assert torch.allclose(pair[1], bbox_overlaps(a[1], b[1], mode="giou"))
    assert torch.allclose(box_iou(a[0], b[0]), bbox_overlaps(a[0], b[0]))
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(bbox_overlaps(point, point), torch.zeros(1, 1))  # no NaN
    assert torch.isfinite(bbox_overlaps(point, point, mode="giou")).all()


def test_box_ops_are_differentiable():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 0.5, 3.0, 3.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: bbox_overlaps(x, y, mode="giou"), (a, b))
    assert torch.autograd.gradcheck(box_iou, (a, b))
    logits = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: integral(x, 7), (logits,))


def test_distance_encoding_round_trip_and_clipping():
    points = torch.tensor([[10.0, 20.0], [5.0, 5.0]])
    boxes = torch.tensor([[4.0, 17.0, 13.0, 30.0], [0.0, 1.0, 9.5, 8.0]])
    dist = bbox2distance(points, boxes)
    assert torch.allclose(dist, torch.tensor([[6.0, 3.0, 3.0, 10.0], [5.0, 4.0, 4.5, 3.0]]))
    assert torch.allclose(distance2bbox(points, dist), boxes)
    # DFL targets: clipped to [0, reg_max - 0.1].
    clipped = bbox2distance(points, boxes, max_dis=7)
    assert torch.allclose(clipped, torch.tensor([[6.0, 3.0, 3.0, 6.9], [5.0, 4.0, 4.5, 3.0]]))
    outside = bbox2distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0, 2.0, 2.0]]), max_dis=7)
    assert torch.allclose(outside, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    # Decoding clips to (height, width) = (25, 12).
    assert torch.allclose(distance2bbox(points[:1], dist[:1], max_shape=(25, 12)),
                          torch.tensor([[4.0, 17.0, 12.0, 25.0]]))


def test_integral_is_expected_bin():
    sharp = torch.full((1, 32), -1e4)
    sharp[0, [3, 8 + 0, 16 + 7, 24 + 5]] = 0.0
    assert torch.allclose(integral(sharp, 7), torch.tensor([[3.0, 0.0, 7.0, 5.0]]))
    assert torch.allclose(integral(torch.zeros(2, 5, 32), 7), torch.full((2, 5, 4), 3.5))
    # Two bins 2 and 3 with probabilities 1/4, 3/4 -> 2.75.
    two = torch.full((1, 32), -1e4)
    two[0, [2, 3]] = torch.tensor([0.0, math.log(3)])
    assert math.isclose(integral(two, 7)[0, 0].item(), 2.75, rel_tol=1e-6)


def test_xyxy_to_xywh():
    assert torch.equal(xyxy_to_xywh(torch.tensor([[1.0, 2.0, 4.0, 7.0]])),
                       torch.tensor([[1.0, 2.0, 3.0, 5.0]]))


def test_priors_layout_320():
    priors = make_priors([(40, 40), (20, 20), (10, 10), (5, 5)], (8, 16, 32, 64))
    assert priors.shape == (2125, 4)
    assert priors.dtype == torch.float32
    assert priors[0].tolist() == [4.0, 4.0, 8.0, 8.0]
    assert priors[1].tolist() == [12.0, 4.0, 8.0, 8.0]      # row-major: x moves first
    assert priors[40].tolist() == [4.0, 12.0, 8.0, 8.0]     # second row
    assert priors[1599].tolist() == [316.0, 316.0, 8.0, 8.0]
    assert priors[1600].tolist() == [8.0, 8.0, 16.0, 16.0]  # first cell of stride 16
    assert priors[2100].tolist() == [32.0, 32.0, 64.0, 64.0]  # first cell of stride 64
    assert priors[-1].tolist() == [288.0, 288.0, 64.0, 64.0]


# --------------------------------------------------------------------------- NMS

def reference_nms(boxes, scores, iou_thr):
    """Textbook greedy NMS, one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[k:k + 1]).item() <= iou_thr for k in kept):
            kept.append(i)
    return kept


def clustered_scene(num_boxes, num_classes, seed, tie_step=None):
    """Boxes around a few objects, each object with one dominant class, plus noise
    scores in all classes; ``tie_step`` rounds scores to create ties."""
    g = torch.Generator().manual_seed(seed)
    num_objects = 12
    centers = torch.rand(num_objects, 2, generator=g) * 250 + 30
    sizes = torch.rand(num_objects, 2, generator=g) * 60 + 10
    obj_class = torch.randint(0, num_classes, (num_objects,), generator=g)
    obj = torch.randint(0, num_objects, (num_boxes,), generator=g)
    ctr = centers[obj] + torch.randn(num_boxes, 2, generator=g) * sizes[obj] * 0.12
    wh = sizes[obj] * (1 + 0.2 * torch.randn(num_boxes, 2, generator=g)).clamp(min=0.3)
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = torch.rand(num_boxes, num_classes, generator=g) * 0.1
    scores[torch.arange(num_boxes), obj_class[obj]] = torch.rand(num_boxes, generator=g)
    if tie_step is not None:
        scores = (scores / tie_step).round() * tie_step
    return boxes, scores


def test_nms_hand_made_chain():
    # B overlaps A (IoU 80/120) and is dropped; C overlaps B (80/120) but not A enough
    # (60/140), so greedy NMS keeps C because B is gone.
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.6).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert nms(boxes[[2, 1, 0]], scores, 0.6).tolist() == [0, 2]


def test_nms_threshold_is_strict_and_ties_go_to_lower_index():
    boxes = torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1]])  # IoU exactly 2/4
    assert nms(boxes, torch.tensor([0.5, 0.9]), 0.5).tolist() == [1, 0]
    assert nms(boxes, torch.tensor([0.5, 0.9]), 0.49).tolist() == [1]
    assert nms(boxes, torch.tensor([0.7, 0.7]), 0.49).tolist() == [0]


def test_nms_matches_reference_loop():
    for seed in range(3):
        boxes, scores = clustered_scene(150, 1, seed, tie_step=0.02 if seed == 2 else None)
        got = nms(boxes, scores[:, 0], 0.5).tolist()
        assert got == reference_nms(boxes, scores[:, 0], 0.5)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_multiclass_nms_hand_made():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([[0.9, 0.025],    # class 1 at exactly the threshold: excluded
                           [0.8, 0.3],      # class 0: IoU 81/119 with box 0 -> suppressed
                           [0.02, 0.6]])
    out_boxes, out_scores, out_labels = multiclass_nms(boxes, scores, score_thr=0.025, iou_thr=0.6)
    assert out_labels.tolist() == [0, 1, 1]
    assert torch.allclose(out_scores, torch.tensor([0.9, 0.6, 0.3]))
    assert torch.equal(out_boxes, boxes[[0, 2, 1]])
    assert out_labels.dtype == torch.int64
    top1 = multiclass_nms(boxes, scores, keep_top_k=1)
    assert top1[1].tolist() == [pytest.approx(0.9)]
    empty = multiclass_nms(boxes, torch.zeros(3, 2))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,) and empty[2].shape == (0,)


def test_multiclass_nms_top_k_is_applied_before_nms():
    # Five copies of one box: without the cap NMS keeps only the best. With
    # nms_top_k=2 only the two best enter NMS; the far box (4th best) never competes.
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[50.0, 50, 60, 60]] + [[0.0, 0, 10, 10]])
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5]])
    assert multiclass_nms(boxes, scores, nms_top_k=1000)[1].tolist() == pytest.approx([0.9, 0.6])
    assert multiclass_nms(boxes, scores, nms_top_k=2)[1].tolist() == pytest.approx([0.9])


def _ort_nms_session():
    inputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
        helper.make_tensor_value_info("max_per_class", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("iou_thr", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("score_thr", TensorProto.FLOAT, [1]),
    ]
    output = helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])
    node = helper.make_node("NonMaxSuppression", [i.name for i in inputs], ["selected"],
                            center_point_box=0)
    graph = helper.make_graph([node], "nms", inputs, [output])
    # IR version 8 is the one that goes with opset 17; onnx's default can be newer than
    # the installed onnxruntime accepts.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def ort_multiclass_nms(session, boxes, scores, score_thr, iou_thr, max_per_class, keep_top_k):
    """ORT NonMaxSuppression, then a top-k over the selected (class, box) pairs by score
    with ties to the earlier selection (ONNX TopK's rule). Returns (box_idx, labels)."""
    selected = session.run(None, {
        "boxes": boxes.numpy()[None],
        "scores": scores.t().contiguous().numpy()[None],
        "max_per_class": np.array([max_per_class], dtype=np.int64),
        "iou_thr": np.array([iou_thr], dtype=np.float32),
        "score_thr": np.array([score_thr], dtype=np.float32),
    })[0]
    labels, box_idx = selected[:, 1], selected[:, 2]
    order = np.argsort(-scores.numpy()[box_idx, labels], kind="stable")[:keep_top_k]
    return box_idx[order], labels[order]


def keep_per_class_top_k(scores, k):
    """Zero every score outside its class's top k (ties: lower box index first)."""
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices
    masked = torch.zeros_like(scores)
    top = order[:k]
    masked.scatter_(0, top, scores.gather(0, top))
    return masked


@pytest.mark.parametrize("seed,tie_step", [(0, None), (1, None), (2, 0.05)])
def test_multiclass_nms_matches_onnxruntime(seed, tie_step):
    session = _ort_nms_session()
    boxes, scores = clustered_scene(600, 5, seed, tie_step)
    assert ((scores > 0.025).sum(0) <= 1000).all()  # pre- and post-NMS caps coincide here
    got_boxes, got_scores, got_labels = multiclass_nms(boxes, scores, 0.025, 0.6, 1000, 100)
    box_idx, labels = ort_multiclass_nms(session, boxes, scores, 0.025, 0.6, 1000, 100)
    assert len(got_labels) == 100
    assert got_labels.tolist() == labels.tolist()
    assert torch.equal(got_boxes, boxes[box_idx])
    assert torch.equal(got_scores, scores[box_idx, labels])

    # Every kept detection, no final cap.
    all_boxes, _, all_labels = multiclass_nms(boxes, scores, 0.025, 0.45, 1000, -1)
    box_idx, labels = ort_multiclass_nms(session, boxes, scores, 0.025, 0.45, 1000, 10 ** 6)
    assert all_labels.tolist() == labels.tolist()
    assert torch.equal(all_boxes, boxes[box_idx])


def test_nms_top_k_semantics_against_onnxruntime():
    """ORT caps after NMS; multiclass_nms (like Paddle) caps before. They agree once the
    ONNX input keeps only each class's top-k scores, and differ without that step."""
    session = _ort_nms_session()
    boxes, scores = clustered_scene(600, 5, seed=3)
    k = 40
    ours = multiclass_nms(boxes, scores, 0.025, 0.6, nms_top_k=k, keep_top_k=-1)

    masked = keep_per_class_top_k(scores, k)
    box_idx, labels = ort_multiclass_nms(session, boxes, masked, 0.025, 0.6, k, 10 ** 6)
    assert ours[2].tolist() == labels.tolist()
    assert torch.equal(ours[0], boxes[box_idx])

    raw_idx, raw_labels = ort_multiclass_nms(session, boxes, scores, 0.025, 0.6, k, 10 ** 6)
    assert len(raw_labels) > len(labels)  # post-NMS cap lets later, distinct boxes in


def test_iou_exactly_at_threshold_agrees_with_onnxruntime():
    session = _ort_nms_session()
    boxes = torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1], [0.5, 0, 3.5, 1]])  # IoUs 0.5, 0.714
    scores = torch.tensor([[0.9], [0.5], [0.3]])
    for thr in (0.5, 0.49, 0.75):
        ours = multiclass_nms(boxes, scores, 0.025, thr, 1000, -1)
        box_idx, _ = ort_multiclass_nms(session, boxes, scores, 0.025, thr, 1000, 10 ** 6)
        assert torch.equal(ours[0], boxes[box_idx])
