"""COCO bbox mAP with pycocotools, guarded against its silent pitfalls.

* Detections are ``xywh`` in original-image pixels with real COCO category ids; the model
  predicts contiguous labels, so ``detections_to_coco`` maps them (using label ids as
  category ids gives AP 0.000 without any error).
* No detections at all: ``COCO.loadRes([])`` raises, so that case returns zeros directly.
* Scoring a subset of the images must set ``params.imgIds``, or every image without
  detections counts as misses.
* pycocotools reports -1 for a metric that has no GT (e.g. ``mAP_small`` when no GT box
  is small). Those come back as 0.0, so every value is a float in [0, 1] and can be
  averaged or logged without special cases; the per-size metrics of a subset with no GT of
  that size therefore read 0.0, not "undefined".
"""

import contextlib
import io

import torch
from pycocotools.cocoeval import COCOeval

from .ops.boxes import xyxy_to_xywh

STAT_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
             "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def detections_to_coco(image_id, boxes, scores, labels, label_to_cat_id):
    """One image's detections as COCO result dicts.

    Args:
        image_id: the COCO image id.
        boxes: ``[K, 4]`` xyxy in original-image pixels (tensor or array).
        scores: ``[K]``.
        labels: ``[K]`` contiguous labels ``0..C-1``.
        label_to_cat_id: sequence or mapping from contiguous label to COCO category id.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    """
    xywh = xyxy_to_xywh(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)).tolist()
    scores = torch.as_tensor(scores).reshape(-1).tolist()
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    return [
        {"image_id": int(image_id), "category_id": int(label_to_cat_id[int(label)]),
         "bbox": box, "score": float(score)}
        for box, score, label in zip(xywh, scores, labels)
    ]


def coco_evaluate(coco_gt, detections, image_ids=None):
    """COCO bbox metrics of ``detections`` against ``coco_gt``.

    Args:
        coco_gt: ``pycocotools.coco.COCO`` with the ground truth.
        detections: list of ``{"image_id", "category_id", "bbox" (xywh), "score"}``.
        image_ids: evaluate only these images (default: every image of ``coco_gt``).

    Returns:
        ``{key: float}`` for the twelve ``STAT_KEYS`` (pycocotools' ``stats`` order),
        each in [0, 1]; -1 ("no GT for this metric") is reported as 0.0.

    Raises:
        ValueError: a detection names an image that is not in ``coco_gt``.
    """
    if not detections:
        return {key: 0.0 for key in STAT_KEYS}
    unknown = {d["image_id"] for d in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(
            f"coco_evaluate: detections for image ids not in the ground truth: {sorted(unknown)[:10]}")

    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys to the dicts it gets; give it copies.
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: max(float(value), 0.0) for key, value in zip(STAT_KEYS, evaluator.stats)}
