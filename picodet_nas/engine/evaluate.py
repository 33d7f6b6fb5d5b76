"""COCO evaluation of a detector on a dataset, the one code path of training, `nas eval` and
the supernet's subnet scoring: eval preprocessing (§5.6), release/2.3 post-processing (§3.4),
pycocotools bbox mAP."""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data import CocoDetection, build_eval_loader
from ..evaluation import STAT_KEYS, coco_evaluate, detections_to_coco
from ..postprocess import EVAL_NMS, NMSConfig, postprocess

EVAL_BATCH_SIZE = 8  # PaddleDetection's eval batch; keep it fixed so that numbers repeat exactly


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Mixed precision on the device when `amp_dtype` is set; a no-op context otherwise."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def detect(model: nn.Module, images: torch.Tensor, scale_factors: torch.Tensor | None = None,
           amp_dtype: torch.dtype | None = None, nms: NMSConfig = EVAL_NMS):
    """Per image (boxes xyxy in original pixels, scores, labels) for a normalised batch.

    `model` is a `PicoDet` or a `Supernet` with its subnet active; it must be in eval mode.
    """
    with autocast(images.device, amp_dtype):
        outs = model(images)
    outs = [o.float() for o in outs]
    cls_logits, reg_logits, priors = model.flatten(outs)
    counts = [o.shape[-2] * o.shape[-1] for o in outs]
    return postprocess(cls_logits, reg_logits, priors, counts, tuple(images.shape[-2:]), scale_factors, cfg=nms)


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, list[dict]]],
                    label_to_cat_id: Sequence[int], device: torch.device,
                    amp_dtype: torch.dtype | None = None, progress: bool = False, total: int | None = None) -> list[dict]:
    """COCO result dicts for every image of `batches` ((images, metas) as the eval loader gives)."""
    was_training = model.training
    model.eval()
    detections: list[dict] = []
    try:
        for images, metas in tqdm(batches, total=total, desc="eval", leave=False, disable=None if progress else True):
            scales = torch.tensor([m["scale_factor"] for m in metas], dtype=torch.float32)
            results = detect(model, images.to(device, non_blocking=True), scales.to(device), amp_dtype)
            for meta, (boxes, scores, labels) in zip(metas, results):
                detections += detections_to_coco(meta["image_id"], boxes.cpu(), scores.cpu(), labels.cpu(),
                                                 label_to_cat_id)
    finally:
        model.train(was_training)
    return detections


def evaluate_coco(model: nn.Module, dataset: CocoDetection, input_size: int, *, device: torch.device | str = "cpu",
                  batch_size: int = EVAL_BATCH_SIZE, workers: int = 0, amp_dtype: torch.dtype | None = None,
                  label_to_cat_id: Sequence[int] | None = None, progress: bool = False,
                  resize_filter: str = "pillow") -> dict[str, float]:
    """The twelve COCO bbox numbers of `model` on every image of `dataset` at `input_size`.

    `label_to_cat_id` maps the model's labels to the dataset's category ids (default: the
    dataset's own mapping, right when the model was trained on the same categories).
    `resize_filter`: the evaluation resize (`data.transforms.EVAL_RESIZE_FILTERS`).
    """
    device = torch.device(device)
    loader = build_eval_loader(dataset, input_size, batch_size, workers, resize_filter)
    mapping = dataset.label_to_cat_id if label_to_cat_id is None else label_to_cat_id
    detections = predict_batches(model, loader, mapping, device, amp_dtype, progress, total=len(loader))
    return coco_evaluate(dataset.coco, detections, dataset.image_ids)


class CocoEvaluator:
    """Evaluator of a static model: the twelve COCO numbers on the validation split."""

    names = STAT_KEYS

    def __init__(self, dataset: CocoDetection, input_size: int, device: torch.device, *, batch_size: int,
                 workers: int, amp_dtype: torch.dtype | None):
        self.dataset, self.input_size, self.device = dataset, input_size, device
        self.batch_size, self.workers, self.amp_dtype = batch_size, workers, amp_dtype

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate_coco(model, self.dataset, self.input_size, device=self.device, batch_size=self.batch_size,
                             workers=self.workers, amp_dtype=self.amp_dtype, progress=True)
