"""SimOTA label assignment with the VFL + GIoU cost of PP-PicoDet.

Follows PaddleDetection release/2.3 ``SimOTAAssigner`` (``use_vfl=True``) step by step;
the only deliberate differences are noted where they occur:

* fewer than ``candidate_topk`` candidates: dynamic k sums the IoUs of all of them
  (Paddle's ``topk`` would raise; mmdet does the same as here);
* ties in cost are broken by the lower prior index (Paddle leaves them to ``topk``).
"""

from dataclasses import dataclass

import torch

from ..ops.boxes import bbox_overlaps

INF = 100000000.0


@dataclass
class AssignResult:
    """Per-prior targets for one image.

    Attributes:
        assigned_gt_inds: ``[N]`` int64, index of the matched GT, ``-1`` for background.
        assigned_labels: ``[N]`` int64, GT class, ``num_classes`` for background.
        assigned_bboxes: ``[N, 4]`` matched GT box (input pixels), zeros for background.
        pos_inds: ``[P]`` int64, indices of the positive priors, ascending.
        pos_ious: ``[P]`` IoU between each positive's decoded prediction and its GT.
    """

    assigned_gt_inds: torch.Tensor
    assigned_labels: torch.Tensor
    assigned_bboxes: torch.Tensor
    pos_inds: torch.Tensor
    pos_ious: torch.Tensor

    @property
    def num_pos(self):
        """Number of positive priors (the loss uses ``max(num_pos, 1)`` per image)."""
        return int(self.pos_inds.numel())


def _clamped_log(x):
    """``log`` clamped at -100, as ``F.binary_cross_entropy`` does (the reference cost
    is computed with it), so p = 0 or 1 gives a large finite cost instead of inf."""
    return torch.log(x).clamp(min=-100.0)


class SimOTAAssigner:
    """Dynamic-k matching of priors to GT boxes, on detached predictions.

    Args:
        center_radius: half-size of the GT center square, in units of the prior's stride.
        candidate_topk: how many of a GT's best IoUs are summed to get its dynamic k.
        iou_weight: weight of ``1 - GIoU`` in the cost (6 in PicoDet, 3 in Paddle's default).
        cls_weight: weight of the VFL cost.
        num_classes: C; also the background label.
        alpha, gamma: VFL parameters of the classification cost.
    """

    def __init__(self, center_radius=2.5, candidate_topk=10, iou_weight=6.0, cls_weight=1.0,
                 num_classes=80, alpha=0.75, gamma=2.0):
        self.center_radius = center_radius
        self.candidate_topk = candidate_topk
        self.iou_weight = iou_weight
        self.cls_weight = cls_weight
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma

    def _background(self, priors, gt_bboxes):
        num_priors = priors.shape[0]
        device = priors.device
        return AssignResult(
            assigned_gt_inds=torch.full((num_priors,), -1, dtype=torch.long, device=device),
            assigned_labels=torch.full((num_priors,), self.num_classes, dtype=torch.long,
                                       device=device),
            assigned_bboxes=gt_bboxes.new_zeros((num_priors, 4)),
            pos_inds=torch.zeros(0, dtype=torch.long, device=device),
            pos_ious=gt_bboxes.new_zeros((0,)),
        )

    def _candidate_masks(self, priors, gt_bboxes):
        """``in_box [N, n]``: prior center strictly inside the GT box; ``in_center [N, n]``:
        strictly inside the GT center square of +-center_radius * stride."""
        cx, cy = priors[:, 0:1], priors[:, 1:2]
        stride_x, stride_y = priors[:, 2:3], priors[:, 3:4]
        x1, y1, x2, y2 = gt_bboxes.unbind(dim=1)
        in_box = (cx > x1) & (cy > y1) & (cx < x2) & (cy < y2)

        gt_cx = (x1 + x2) / 2.0
        gt_cy = (y1 + y2) / 2.0
        in_center = ((cx > gt_cx - self.center_radius * stride_x)
                     & (cy > gt_cy - self.center_radius * stride_y)
                     & (cx < gt_cx + self.center_radius * stride_x)
                     & (cy < gt_cy + self.center_radius * stride_y))
        return in_box, in_center

    def _vfl_cost(self, scores, ious, gt_labels):
        """VFL on probabilities, summed over classes, for every (candidate, GT) pair.

        The target row of pair (i, j) is IoU(i, j) at class ``gt_labels[j]`` and 0
        elsewhere. All-zero-target classes contribute ``alpha * p**gamma * -log(1 - p)``
        whatever j is, so the cost is that sum over all classes with the GT class's term
        swapped for its target-IoU term: O(V*n) memory instead of O(V*n*C).
        """
        log_p, log_1mp = _clamped_log(scores), _clamped_log(1 - scores)
        neg = self.alpha * scores.pow(self.gamma) * -log_1mp                      # [V, C]
        neg_gt = neg[:, gt_labels]                                                # [V, n]
        pos = ious * -(ious * log_p[:, gt_labels] + (1 - ious) * log_1mp[:, gt_labels])
        # A zero IoU is a zero target: the GT class then counts like any other class.
        gt_term = torch.where(ious > 0, pos, neg_gt)
        return neg.sum(dim=1, keepdim=True) - neg_gt + gt_term

    @torch.no_grad()
    def assign(self, pred_scores, priors, decoded_bboxes, gt_bboxes, gt_labels):
        """Assign GTs to priors for one image.

        Args:
            pred_scores: ``[N, C]`` sigmoid class probabilities (detached).
            priors: ``[N, 4]`` (cx, cy, stride, stride) in input pixels.
            decoded_bboxes: ``[N, 4]`` predicted xyxy boxes in input pixels.
            gt_bboxes: ``[n, 4]`` xyxy in input pixels; ``n`` may be 0.
            gt_labels: ``[n]`` int64 in ``[0, C)``.

        Returns:
            AssignResult. No GT, or no prior inside any GT box or center square, leaves
            every prior background.
        """
        result = self._background(priors, gt_bboxes)
        if gt_bboxes.shape[0] == 0:
            return result

        in_box, in_center = self._candidate_masks(priors, gt_bboxes)
        valid_inds = torch.nonzero((in_box | in_center).any(dim=1), as_tuple=True)[0]
        if valid_inds.numel() == 0:
            return result
        in_both = in_box[valid_inds] & in_center[valid_inds]                       # [V, n]
        boxes = decoded_bboxes[valid_inds]
        scores = pred_scores[valid_inds]

        ious = bbox_overlaps(boxes, gt_bboxes)                                     # [V, n]
        gious = bbox_overlaps(boxes, gt_bboxes, mode="giou")
        cost = (self._vfl_cost(scores, ious, gt_labels) * self.cls_weight
                + (1 - gious) * self.iou_weight
                + (~in_both).to(ious.dtype) * INF)

        matching = self._dynamic_k_matching(cost, ious)                            # [V, n]
        fg = matching.any(dim=1)
        matched_gt = matching[fg].to(torch.uint8).argmax(dim=1)
        pos_inds = valid_inds[fg]

        result.assigned_gt_inds[pos_inds] = matched_gt
        result.assigned_labels[pos_inds] = gt_labels[matched_gt].long()
        result.assigned_bboxes[pos_inds] = gt_bboxes[matched_gt]
        result.pos_inds = pos_inds
        result.pos_ious = ious[fg].gather(1, matched_gt[:, None]).squeeze(1)
        return result

    def _dynamic_k_matching(self, cost, ious):
        """``[V, n]`` bool matrix, at most one True per row.

        Each GT j takes its k_j lowest-cost candidates, k_j = max(1, floor(sum of its top
        ``candidate_topk`` IoUs)). A candidate taken by several GTs then goes to the GT of
        lowest cost over all GTs (argmin over the whole row, as the reference does).
        """
        num_valid = cost.shape[0]
        topk_ious = ious.topk(min(self.candidate_topk, num_valid), dim=0).values
        dynamic_ks = topk_ious.sum(dim=0).long().clamp(min=1)                     # [n]

        # rank[i, j]: position of candidate i in GT j's cost order (stable: lower index
        # first on ties).
        order = torch.sort(cost, dim=0, stable=True).indices
        positions = torch.arange(num_valid, device=cost.device)[:, None].expand_as(order)
        rank = torch.empty_like(order).scatter_(0, order, positions)
        matching = rank < dynamic_ks[None, :]

        conflicted = matching.sum(dim=1) > 1
        if conflicted.any():
            best_gt = cost[conflicted].argmin(dim=1)
            matching[conflicted] = False
            matching[conflicted.nonzero(as_tuple=True)[0], best_gt] = True
        return matching
