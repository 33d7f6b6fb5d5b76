"""Box geometry shared by the head, the assigner, the losses and post-processing.

All boxes are ``xyxy`` in input pixels unless a caller divides by the stride first
(the losses work in stride units). Every function is batched over
leading dimensions and differentiable, so the same code serves training and inference.
"""

import torch
import torch.nn.functional as F


def box_area(boxes):
    """Area of ``[..., 4]`` xyxy boxes, ``[...]``. No ``+1``: boxes are continuous
    (PicoDet uses ``normalized=True``)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def bbox_overlaps(boxes1, boxes2, mode="iou", is_aligned=False, eps=1e-6):
    """IoU or GIoU between two sets of xyxy boxes.

    Args:
        boxes1: ``[..., N, 4]``.
        boxes2: ``[..., M, 4]`` (``M == N`` when ``is_aligned``).
        mode: ``"iou"`` or ``"giou"``.
        is_aligned: compare row i of ``boxes1`` with row i of ``boxes2`` only.
        eps: lower bound for the union and the enclosing area, so degenerate
            (zero-area) boxes give 0 instead of NaN. This is the mmdet/Paddle value.

    Returns:
        ``[..., N]`` if aligned, else ``[..., N, M]``. GIoU lies in (-1, 1].
    """
    if mode not in ("iou", "giou"):
        raise ValueError(f"bbox_overlaps: mode must be 'iou' or 'giou', got {mode!r}")
    if not is_aligned:
        boxes1 = boxes1[..., :, None, :]
        boxes2 = boxes2[..., None, :, :]
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)

    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - overlap).clamp(min=eps)
    ious = overlap / union
    if mode == "iou":
        return ious

    enclose_lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enclose_rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclose_wh = (enclose_rb - enclose_lt).clamp(min=0)
    enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return ious - (enclose_area - union) / enclose_area


def box_iou(boxes1, boxes2, eps=1e-6):
    """Pairwise IoU ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``.

    Same values as ``bbox_overlaps(boxes1, boxes2)``, written for NMS, where N and M
    reach 1000: broadcasting contiguous coordinate columns instead of strided
    ``[N, 1, 2]`` slices, and in-place ops that spare three ``N x M`` temporaries, make
    it faster at those sizes.
    The arithmetic (``inter / ((area1 + area2) - inter)`` in that order) is the one
    onnxruntime's NonMaxSuppression kernel uses, so an IoU right at the threshold is
    decided the same way (the tests demand exact agreement with ORT on x86).
    """
    ax1, ay1, ax2, ay2 = (c.contiguous()[:, None] for c in boxes1.unbind(-1))
    bx1, by1, bx2, by2 = (c.contiguous()[None, :] for c in boxes2.unbind(-1))
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    union = (((ax2 - ax1) * (ay2 - ay1)) + ((bx2 - bx1) * (by2 - by1))).sub_(inter)
    return inter.div_(union.clamp_(min=eps))


def distance2bbox(points, distance, max_shape=None):
    """Decode (l, t, r, b) distances from anchor points into xyxy boxes.

    Args:
        points: ``[..., 2]`` (x, y).
        distance: ``[..., 4]`` (l, t, r, b), same units as ``points``.
        max_shape: optional ``(height, width)``; boxes are clipped to
            ``[0, width] x [0, height]`` (eval post-processing clips to the input size).
    """
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    if max_shape is not None:
        height, width = max_shape
        x1 = x1.clamp(min=0, max=width)
        y1 = y1.clamp(min=0, max=height)
        x2 = x2.clamp(min=0, max=width)
        y2 = y2.clamp(min=0, max=height)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points, boxes, max_dis=None, eps=0.1):
    """Encode xyxy boxes as (l, t, r, b) distances from anchor points.

    With ``max_dis`` set (the DFL target, ``max_dis = reg_max``) each distance is clipped
    to ``[0, max_dis - eps]``, so the right-hand bin ``floor(y) + 1`` always exists
    (``[0, 6.9]`` for reg_max 7).
    """
    left = points[..., 0] - boxes[..., 0]
    top = points[..., 1] - boxes[..., 1]
    right = boxes[..., 2] - points[..., 0]
    bottom = boxes[..., 3] - points[..., 1]
    distance = torch.stack([left, top, right, bottom], dim=-1)
    if max_dis is not None:
        distance = distance.clamp(min=0, max=max_dis - eps)
    return distance


def integral(reg_logits, reg_max):
    """Expected distance per side from the GFL distribution logits.

    ``reg_logits [..., 4 * (reg_max + 1)]`` (sides l, t, r, b, each ``reg_max + 1`` bins)
    becomes ``[..., 4]``: softmax over the bins, dotted with ``[0, 1, ..., reg_max]``.
    """
    probs = F.softmax(reg_logits.reshape(*reg_logits.shape[:-1], 4, reg_max + 1), dim=-1)
    project = torch.arange(reg_max + 1, device=reg_logits.device, dtype=probs.dtype)
    return (probs * project).sum(dim=-1)


def xyxy_to_xywh(boxes):
    """``(x1, y1, x2, y2)`` to ``(x, y, w, h)`` (the COCO result format)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def make_priors(feature_sizes, strides, device=None, dtype=torch.float32):
    """Anchor points of all levels, flattened in the head's output order.

    Args:
        feature_sizes: ``[(h, w), ...]`` per level.
        strides: stride per level, same length.

    Returns:
        ``[N, 4]`` rows ``(cx, cy, stride, stride)``; level by level, row-major within a
        level; cell ``(i, j)`` at stride ``s`` sits at ``((j + 0.5) s, (i + 0.5) s)``.
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(
            f"make_priors: {len(feature_sizes)} feature sizes but {len(strides)} strides")
    priors = []
    for (height, width), stride in zip(feature_sizes, strides):
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        s = torch.full_like(xx, stride)
        priors.append(torch.stack([xx, yy, s, s], dim=-1).reshape(-1, 4))
    return torch.cat(priors, dim=0)
