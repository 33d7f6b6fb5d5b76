"""Exact greedy non-maximum suppression in plain torch (no torchvision).

The exported ONNX model uses the ONNX ``NonMaxSuppression`` op, so the PyTorch
evaluation path must give the same boxes. The rules below are the ones onnxruntime's
CPU kernel applies (``non_max_suppression.cc``):

* a (box, class) candidate enters NMS iff ``score > score_thr`` (strict);
* candidates are visited by score descending, ties by lower box index first;
* a candidate is dropped iff its IoU with an already kept box of the same class is
  ``> iou_thr`` (strict); IoU is ``inter / (area1 + area2 - inter)`` without ``+1``,
  and zero-area boxes never suppress or get suppressed.

Where ``nms_top_k`` is applied differs between the two frameworks:

* Paddle's ``MultiClassNMS`` (the published PicoDet mAP) keeps the top
  ``nms_top_k`` candidates of each class *before* NMS;
* ORT's ``max_output_boxes_per_class`` caps the boxes kept *after* NMS.

``multiclass_nms`` follows Paddle (pre-NMS top-k). The two agree exactly whenever no
class has more than ``nms_top_k`` candidates above ``score_thr`` (with 1000 at a 320
input, that takes more than half of the 2125 priors scoring above 0.025 for one class).
For exact agreement in every case the ONNX graph must keep only the per-class top
``nms_top_k`` scores (TopK along the box axis, others set to 0) before
``NonMaxSuppression``; the tests check both statements.

Boxes must be valid xyxy (``x1 <= x2``, ``y1 <= y2``), as decoded boxes always are; ORT
also accepts flipped corners, this module does not.

How it runs: per class, one IoU matrix over the class's ranked candidates, then a sweep
over the ranks that ORs the row of every kept box into a "suppressed" mask; the sweep runs
on numpy bools, because a per-rank torch op costs several times more in dispatch. The matrix
grows as the square of a class's candidates, so a very diffuse score map (every class near
its cap) is the slow case. One matrix over all classes (the class-offset trick) computes
mostly cross-class pairs that are never needed, and a row-by-row greedy loop pays Python per
pair, so both are slower except on such diffuse maps. onnxruntime's op is faster still; this
module exists for the PyTorch evaluation path and as the reference the exported graph is
tested against.
"""

import numpy as np
import torch

from .boxes import box_iou


def _greedy_keep(suppresses):
    """Greedy NMS on a precomputed ``[K, K]`` bool matrix over score-ranked boxes.

    ``suppresses[i, j]`` says box ``i`` would suppress box ``j`` if kept. Ranks are
    visited best first; a rank not yet suppressed is kept and suppresses its row. Only
    later ranks can still be affected, so the diagonal and lower triangle do no harm.
    Returns the ``[K]`` bool keep mask on the input's device.
    """
    rows = suppresses.cpu().numpy()
    suppressed = np.zeros(rows.shape[0], dtype=bool)
    keep = np.zeros(rows.shape[0], dtype=bool)
    for rank, row in enumerate(rows):
        if not suppressed[rank]:
            keep[rank] = True
            np.logical_or(suppressed, row, out=suppressed)
    return torch.from_numpy(keep).to(suppresses.device)


def nms(boxes, scores, iou_thr):
    """Single-class greedy NMS.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        iou_thr: a box is suppressed iff its IoU with a kept, higher-ranked box is
            strictly greater than this.

    Returns:
        int64 indices into ``boxes`` of the kept boxes, by score descending (ties: lower
        index first).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order]
    keep = _greedy_keep(box_iou(ranked, ranked) > iou_thr)
    return order[keep]


def multiclass_nms(boxes, scores, score_thr=0.025, iou_thr=0.6, nms_top_k=1000, keep_top_k=100):
    """Per-class NMS over shared boxes, then a global top-k (Paddle ``MultiClassNMS``).

    Args:
        boxes: ``[N, 4]`` xyxy, shared by all classes.
        scores: ``[N, C]`` class probabilities (no background column).
        score_thr: candidates need ``score > score_thr``.
        iou_thr: per-class suppression threshold (strict ``>``).
        nms_top_k: per class, only the ``nms_top_k`` best candidates enter NMS
            (see the module docstring for how this relates to ORT).
        keep_top_k: at most this many (box, class) detections are returned; ``-1`` or
            ``None`` keeps all.

    Returns:
        ``(boxes [K, 4], scores [K], labels [K] int64)`` sorted by score descending
        (ties: lower class, then lower box index, first).
    """
    box_idx, labels = torch.nonzero(scores > score_thr, as_tuple=True)
    cand_scores = scores[box_idx, labels]

    # Order candidates by class, then score descending, then box index: one stable sort
    # per key, least significant first (nonzero() already yields box index ascending).
    order = torch.sort(cand_scores, descending=True, stable=True).indices
    order = order[torch.sort(labels[order], stable=True).indices]
    box_idx, labels, cand_scores = box_idx[order], labels[order], cand_scores[order]

    # Rank within the class and keep the first nms_top_k of each.
    _, counts = torch.unique_consecutive(labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel(), device=labels.device) - torch.repeat_interleave(
        starts, counts)
    top = rank < nms_top_k
    box_idx, labels, cand_scores = box_idx[top], labels[top], cand_scores[top]
    counts = counts.clamp(max=nms_top_k)

    keep = torch.zeros(labels.numel(), dtype=torch.bool, device=labels.device)
    start = 0
    for count in counts.tolist():
        seg = boxes[box_idx[start:start + count]]
        keep[start:start + count] = _greedy_keep(box_iou(seg, seg) > iou_thr)
        start += count
    box_idx, labels, cand_scores = box_idx[keep], labels[keep], cand_scores[keep]

    final = torch.sort(cand_scores, descending=True, stable=True).indices
    if keep_top_k is not None and keep_top_k >= 0:
        final = final[:keep_top_k]
    return boxes[box_idx[final]], cand_scores[final], labels[final]
