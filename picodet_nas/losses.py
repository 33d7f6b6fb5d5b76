"""PP-PicoDet training losses: VFL + GIoU + DFL with SimOTA targets.

Mirrors PaddleDetection release/2.3 ``OTAVFLHead.get_loss``. The head's levels are
flattened into one prior axis; every per-level sum of the reference is a sum over priors,
so summing over the flattened axis gives the same totals.

Normalisers under DDP, as the reference behaves: the VFL normaliser
``sum over this process's images of max(#pos, 1)`` stays per process (the reference's
all-reduce of it fails on a Python int and falls back silently), while the box-loss
normaliser ``sum of w`` is averaged over processes before clipping at 1.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .assign import SimOTAAssigner
from .ops.boxes import bbox2distance, bbox_overlaps, distance2bbox, integral


def _reduce(loss, weight, reduction):
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")


def varifocal_loss(logits, targets, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="sum"):
    """Varifocal loss (arXiv 2008.13367) on raw logits.

    BCE-with-logits against soft targets ``t`` (the IoU at [positive, class], else 0),
    weighted by ``t`` where ``t > 0`` (1 if not ``iou_weighted``) and by
    ``alpha * |sigmoid(x) - t|**gamma`` elsewhere. As in the reference, the negative
    weight is not detached: its gradient is part of the published loss.
    """
    targets = targets.to(logits.dtype)
    pos_weight = targets if iou_weighted else torch.ones_like(targets)
    neg_weight = alpha * (logits.sigmoid() - targets).abs().pow(gamma)
    focal_weight = torch.where(targets > 0, pos_weight, neg_weight)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * focal_weight
    return _reduce(loss, None, reduction)


def giou_loss(pred, target, weight=None, reduction="sum", eps=1e-6):
    """``1 - GIoU`` between aligned xyxy boxes ``[M, 4]``, optionally weighted per box.

    ``eps`` floors the union and hull areas (Paddle's GIoULoss adds 1e-10 to them
    instead; the difference is invisible for boxes of stride-unit size).
    """
    loss = 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
    return _reduce(loss, weight, reduction)


def distribution_focal_loss(reg_logits, target, weight=None, reduction="sum"):
    """Distribution focal loss (GFL, arXiv 2006.04388).

    Args:
        reg_logits: ``[M, reg_max + 1]`` bin logits of one side each.
        target: ``[M]`` continuous distances in ``[0, reg_max - 0.1]``, so both
            neighbouring bins ``floor(y)`` and ``floor(y) + 1`` exist.
        weight: optional ``[M]``.

    Cross-entropy to the two bins around y, weighted by linear interpolation, so the
    minimum puts all mass on them with expectation y.
    """
    left = target.long()
    right = left + 1
    weight_left = right.to(target.dtype) - target
    weight_right = target - left.to(target.dtype)
    loss = (F.cross_entropy(reg_logits, left, reduction="none") * weight_left
            + F.cross_entropy(reg_logits, right, reduction="none") * weight_right)
    return _reduce(loss, weight, reduction)


def _global_normalizer(value):
    """A loss normaliser (a tensor of them) as one process on the whole global batch would have
    it, the sum over processes clamped at 1, divided by the number of processes: a rank that
    divides its loss by it makes DDP's gradient (the mean of the ranks' gradients) the
    gradient of one process on the global batch. One process: the value clamped at 1."""
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        world_size = dist.get_world_size()
    return value.clamp(min=1) / world_size


class PicoDetLoss:
    """VFL + weighted GIoU + weighted DFL, with SimOTA assignment per image.

    Args:
        num_classes: C.
        reg_max: last bin of the box distributions (7: 8 bins per side).
        strides: the head's strides; the stride column of ``priors`` must only hold these
            (catches priors built for another layout or in another format).
        vfl_weight, giou_weight, dfl_weight: 1.0 / 2.0 / 0.25 in PicoDet.
        assigner: defaults to ``SimOTAAssigner(num_classes=num_classes)`` with PicoDet's
            settings (center radius 2.5, top-10, IoU weight 6).
    """

    def __init__(self, num_classes, reg_max=7, strides=(8, 16, 32, 64), vfl_weight=1.0,
                 giou_weight=2.0, dfl_weight=0.25, assigner=None):
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = tuple(strides)
        self.vfl_weight = vfl_weight
        self.giou_weight = giou_weight
        self.dfl_weight = dfl_weight
        self.assigner = assigner if assigner is not None else SimOTAAssigner(num_classes=num_classes)

    def _check_priors(self, priors):
        known = torch.tensor(self.strides, dtype=priors.dtype, device=priors.device)
        unknown = priors[:, 2].unique()
        unknown = unknown[~torch.isin(unknown, known)]
        if unknown.numel():
            raise ValueError(
                f"PicoDetLoss: priors have strides {unknown.tolist()} not in {list(self.strides)};"
                " priors must be (cx, cy, stride, stride) rows from make_priors")

    def __call__(self, cls_logits, reg_logits, priors, gt_boxes, gt_labels):
        """Loss of one batch.

        Args:
            cls_logits: ``[B, N, C]`` raw class logits.
            reg_logits: ``[B, N, 4 * (reg_max + 1)]`` raw distribution logits.
            priors: ``[N, 4]`` (cx, cy, stride, stride) in input pixels.
            gt_boxes: list of B ``[n_i, 4]`` xyxy boxes in input pixels (``n_i`` may be 0).
            gt_labels: list of B ``[n_i]`` int64 labels in ``[0, C)``.

        Returns:
            ``(total, parts)``: ``total`` is the differentiable scalar; ``parts`` holds
            floats ``loss_vfl``, ``loss_giou``, ``loss_dfl`` (each already weighted and
            normalised) and ``num_pos`` (positive priors in the batch, not clipped).
        """
        self._check_priors(priors)
        num_images = cls_logits.shape[0]
        strides = priors[:, 2:3]

        # Decoded in stride units (where the losses live) and in pixels (what SimOTA sees).
        pred_boxes = distance2bbox(priors[:, :2] / strides, integral(reg_logits, self.reg_max))
        pred_boxes_px = pred_boxes.detach() * strides
        pred_scores = cls_logits.detach().sigmoid()

        labels = torch.full(cls_logits.shape[:2], self.num_classes, dtype=torch.long,
                            device=cls_logits.device)
        target_boxes = pred_boxes_px.new_zeros(pred_boxes_px.shape)
        num_pos = 0
        num_total_pos = 0
        for i in range(num_images):
            result = self.assigner.assign(pred_scores[i], priors, pred_boxes_px[i],
                                          gt_boxes[i], gt_labels[i])
            labels[i] = result.assigned_labels
            target_boxes[i] = result.assigned_bboxes
            num_pos += result.num_pos
            num_total_pos += max(result.num_pos, 1)

        img_inds, prior_inds = torch.nonzero(labels < self.num_classes, as_tuple=True)
        pos_labels = labels[img_inds, prior_inds]
        pos_strides = strides[prior_inds]
        pos_centers = priors[prior_inds, :2] / pos_strides
        pos_pred = pred_boxes[img_inds, prior_inds]
        pos_target = target_boxes[img_inds, prior_inds] / pos_strides

        # Box losses of the positives are weighted by each one's best class score. Both
        # normalisers are those of the global batch (one all-reduce under DDP).
        weight = pred_scores[img_inds, prior_inds].max(dim=1).values
        vfl_norm, avg_factor = _global_normalizer(torch.stack([weight.new_tensor(float(num_total_pos)),
                                                               weight.sum()]))

        # VFL over every prior and class; the target IoU is detached.
        vfl_targets = torch.zeros_like(cls_logits)
        vfl_targets[img_inds, prior_inds, pos_labels] = bbox_overlaps(
            pos_pred.detach(), pos_target, is_aligned=True)
        loss_vfl = self.vfl_weight * varifocal_loss(cls_logits, vfl_targets) / vfl_norm

        loss_giou = self.giou_weight * giou_loss(pos_pred, pos_target, weight=weight) / avg_factor
        dfl_targets = bbox2distance(pos_centers, pos_target, max_dis=self.reg_max)
        loss_dfl = self.dfl_weight * distribution_focal_loss(
            reg_logits[img_inds, prior_inds].reshape(-1, self.reg_max + 1),
            dfl_targets.reshape(-1),
            weight=weight[:, None].expand(-1, 4).reshape(-1),
        ) / 4.0 / avg_factor

        total = loss_vfl + loss_giou + loss_dfl
        parts = {
            "loss_vfl": loss_vfl.item(),
            "loss_giou": loss_giou.item(),
            "loss_dfl": loss_dfl.item(),
            "num_pos": float(num_pos),
        }
        return total, parts


def inplace_distillation_loss(student, teacher, num_classes, reg_max=7):
    """In-place distillation of a dense detector (BigNAS / AttentiveNAS use it for logits; here
    for the two outputs of every prior): the student's class scores against the teacher's
    (sigmoid BCE minus the teacher's own entropy, i.e. a per-class Bernoulli KL, summed over
    classes) and its box distributions against the teacher's (KL of the softmax over the
    `reg_max + 1` bins, averaged over the 4 sides, weighted by the teacher's highest class
    score so that background priors barely count); both normalised by the sum of those weights
    (over the global batch under DDP).

    student, teacher: per-level head outputs `[B, C + 4 * (reg_max + 1), H, W]`; the teacher
    (detached by the caller) may run at another input size: its maps are resized (bilinear) to
    the student's, which holds because both see the same images, scaled.
    """
    s_flat, t_flat = [], []
    for s, t in zip(student, teacher):
        if t.shape[-2:] != s.shape[-2:]:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
        s_flat.append(s.flatten(2))
        t_flat.append(t.flatten(2))
    s_all = torch.cat(s_flat, dim=2).transpose(1, 2).float()  # [B, N, C + 4 * bins]
    t_all = torch.cat(t_flat, dim=2).transpose(1, 2).float()
    s_cls, t_cls = s_all[..., :num_classes], t_all[..., :num_classes]
    t_prob = t_cls.sigmoid()
    cls_kl = (F.binary_cross_entropy_with_logits(s_cls, t_prob, reduction="none")
              - F.binary_cross_entropy_with_logits(t_cls, t_prob, reduction="none")).sum(-1)  # [B, N]
    bins = reg_max + 1
    s_reg = s_all[..., num_classes:].reshape(*s_all.shape[:2], 4, bins)
    t_reg = t_all[..., num_classes:].reshape(*t_all.shape[:2], 4, bins)
    t_logp = F.log_softmax(t_reg, dim=-1)
    box_kl = (t_logp.exp() * (t_logp - F.log_softmax(s_reg, dim=-1))).sum(-1).mean(-1)  # [B, N]
    weight = t_prob.max(dim=-1).values
    norm = _global_normalizer(weight.sum())
    return (cls_kl.sum() + (box_kl * weight).sum()) / norm
