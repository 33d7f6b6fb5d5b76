"""COCO evaluation of a detector on a dataset, the one code path of training, `nas eval` and
the supernet's subnet scoring: eval preprocessing, release/2.3 post-processing,
pycocotools bbox mAP.

Under DDP every rank evaluates: each predicts its share of the batches, rank 0 gathers the
detections, puts them back in the order one process would have made them and runs
pycocotools once, and every rank gets the numbers. The shares are the batches of one process
(`build_eval_loader`), so the numbers are those of one process.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data import CocoDetection, build_eval_loader, normalize
from ..evaluation import STAT_KEYS, coco_evaluate, detections_to_coco
from ..postprocess import EVAL_NMS, NMSConfig, postprocess
from .distributed import DistInfo, gather_to_main, on_main
from .precision import autocast

EVAL_BATCH_SIZE = 8  # PaddleDetection's eval batch; keep it fixed so that numbers repeat exactly


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


def in_image_order(detections: Iterable[dict], image_ids: Sequence[int]) -> list[dict]:
    """`detections` sorted by the position of their image in `image_ids`, each image's in the
    order they came (pycocotools breaks score ties by that order)."""
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    return sorted(detections, key=lambda d: position[d["image_id"]])


def evaluate_coco(model: nn.Module, dataset: CocoDetection, input_size: int, *, device: torch.device | str = "cpu",
                  batch_size: int = EVAL_BATCH_SIZE, workers: int = 0, amp_dtype: torch.dtype | None = None,
                  label_to_cat_id: Sequence[int] | None = None, progress: bool = False,
                  resize_filter: str = "pillow", dist_info: DistInfo | None = None) -> dict[str, float]:
    """The twelve COCO bbox numbers of `model` on every image of `dataset` at `input_size`.

    `label_to_cat_id` maps the model's labels to the dataset's category ids (default: the
    dataset's own mapping, right when the model was trained on the same categories).
    `resize_filter`: the evaluation resize (`data.transforms.EVAL_RESIZE_FILTERS`).
    `dist_info` of several processes: every rank calls this with the same weights and scores
    its share of the images; all get the numbers one process would (see the module's doc).
    Images travel as uint8 and are normalised on `device`.
    """
    device = torch.device(device)
    rank, world_size = (dist_info.rank, dist_info.world_size) if dist_info is not None else (0, 1)
    loader = build_eval_loader(dataset, input_size, batch_size, workers, resize_filter, rank=rank,
                               world_size=world_size, uint8=True, pin_memory=device.type == "cuda")
    batches = ((normalize(images.to(device, non_blocking=True)), metas) for images, metas in loader)
    mapping = dataset.label_to_cat_id if label_to_cat_id is None else label_to_cat_id
    detections = predict_batches(model, batches, mapping, device, amp_dtype, progress and rank == 0,
                                 total=len(loader))
    if dist_info is None or not dist_info.enabled:
        return coco_evaluate(dataset.coco, detections, dataset.image_ids)
    shares = gather_to_main(dist_info, detections)
    return on_main(dist_info, lambda: coco_evaluate(
        dataset.coco, in_image_order((d for share in shares for d in share), dataset.image_ids), dataset.image_ids))


class CocoEvaluator:
    """Evaluator of a static model: the twelve COCO numbers on the validation split (under DDP,
    shared by the ranks of `dist_info`)."""

    names = STAT_KEYS

    def __init__(self, dataset: CocoDetection, input_size: int, device: torch.device, *, batch_size: int,
                 workers: int, amp_dtype: torch.dtype | None, dist_info: DistInfo | None = None):
        self.dataset, self.input_size, self.device = dataset, input_size, device
        self.batch_size, self.workers, self.amp_dtype = batch_size, workers, amp_dtype
        self.dist_info = dist_info

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate_coco(model, self.dataset, self.input_size, device=self.device, batch_size=self.batch_size,
                             workers=self.workers, amp_dtype=self.amp_dtype, progress=True, dist_info=self.dist_info)
