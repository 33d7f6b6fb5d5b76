"""From raw head outputs to detections: decode the box distributions, keep the top
candidates per level, and run multi-class NMS (release/2.3 settings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import REG_MAX
from .ops.boxes import distance2bbox, integral
from .ops.nms import multiclass_nms


@dataclass(frozen=True)
class NMSConfig:
    """The post-processing settings. The defaults (`EVAL_NMS`) keep the best `nms_pre` priors of
    each level and clip the boxes to the network input before NMS; `nms_pre=None, clip=False`
    sends every prior, unclipped, to NMS, as later PaddleDetection releases of the legacy
    PicoHead do (same thresholds)."""

    score_thr: float = 0.025
    iou_thr: float = 0.6
    nms_pre: int | None = 1000  # per level, by max class score, before NMS; None: every prior
    nms_top_k: int = 1000  # per class
    keep_top_k: int = 100
    clip: bool = True  # clip decoded boxes to the network input


EVAL_NMS = NMSConfig()


def decode(cls_logits: torch.Tensor, reg_logits: torch.Tensor, priors: torch.Tensor,
           reg_max: int = REG_MAX, max_shape: tuple[int, int] | None = None):
    """Scores [B, N, C] (sigmoid) and boxes [B, N, 4] xyxy in input pixels."""
    dist = integral(reg_logits, reg_max) * priors[:, 2:3]
    boxes = distance2bbox(priors[:, :2], dist, max_shape=max_shape)
    return cls_logits.sigmoid(), boxes


def select_per_level(scores: torch.Tensor, sizes: list[int], nms_pre: int | None) -> torch.Tensor:
    """Indices of the priors kept before NMS: the `nms_pre` best (by max class score) of each
    level (None: all of them). `scores` is [N, C] for one image; returns a sorted index tensor."""
    if nms_pre is None:
        return torch.arange(scores.shape[0], device=scores.device)
    keep, start = [], 0
    max_scores = scores.max(dim=1).values
    for n in sizes:
        level = max_scores[start:start + n]
        if n > nms_pre:
            idx = level.topk(nms_pre).indices + start
        else:
            idx = torch.arange(start, start + n, device=scores.device)
        keep.append(idx)
        start += n
    return torch.cat(keep).sort().values


def postprocess(cls_logits: torch.Tensor, reg_logits: torch.Tensor, priors: torch.Tensor,
                level_counts: list[int], input_hw: tuple[int, int],
                scale_factors: torch.Tensor | None = None, cfg: NMSConfig = EVAL_NMS):
    """Per image: (boxes [K, 4] xyxy, scores [K], labels [K]).

    Boxes are clipped to the network input (unless `cfg.clip` is off), then divided by the image's scale factors
    (sx, sy) = input / original, so they come back in original-image pixels.
    """
    scores, boxes = decode(cls_logits, reg_logits, priors, max_shape=input_hw if cfg.clip else None)
    results = []
    for b in range(scores.shape[0]):
        keep = select_per_level(scores[b], level_counts, cfg.nms_pre)
        bx, sc = boxes[b, keep], scores[b, keep]
        if scale_factors is not None:
            sx, sy = scale_factors[b].tolist()
            bx = bx / bx.new_tensor([sx, sy, sx, sy])
        results.append(multiclass_nms(bx, sc, score_thr=cfg.score_thr, iou_thr=cfg.iou_thr,
                                      nms_top_k=cfg.nms_top_k, keep_top_k=cfg.keep_top_k))
    return results
