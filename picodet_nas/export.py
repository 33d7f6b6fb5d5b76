"""ONNX export of a PicoDet network, in the two forms a user deploys.

* Without post-processing (the deployable form that latency tables time): per level,
  `scores_<i>` [B, HW, C] after sigmoid and `dists_<i>` [B, HW, 4 * (reg_max + 1)] raw
  box-distribution logits. Dynamic batch.
* With post-processing: `boxes` [K, 4] (xyxy, network-input pixels), `scores` [K] and
  `classes` [K] (int64, contiguous labels), after the evaluation NMS of the spec. The NMS is
  ONNX's own `NonMaxSuppression` operator, so ONNX Runtime runs it natively. Batch 1.

We use the TorchScript exporter (`dynamo=False`): it exports a small block far faster than
the dynamo exporter, which matters when profiling hundreds of blocks, and it lets a custom
autograd function emit `NonMaxSuppression` directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import onnx
import torch
from torch import nn

from .models.detector import PicoDet, flatten_outputs
from .postprocess import EVAL_NMS, NMSConfig, decode, postprocess, select_per_level
from .data.classes import class_names_of
from .data.transforms import EVAL_PREPROCESSING
from .utils.io import atomic_write_bytes

OPSET = 17


class DeployModel(nn.Module):
    """Raw per-level outputs in the NHWC-flattened layout of Paddle's export."""

    def __init__(self, model: PicoDet):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: list[torch.Tensor] = []
        for o in self.model(x):
            flat = o.flatten(2).transpose(1, 2)
            outputs += [flat[..., : self.num_classes].sigmoid(), flat[..., self.num_classes:]]
        return tuple(outputs)

    def output_names(self) -> list[str]:
        n = len(self.model.strides)
        return [name for i in range(n) for name in (f"scores_{i}", f"dists_{i}")]


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX `NonMaxSuppression`: selected (batch, class, box) triples [K, 3].

    It exists only to emit that operator while exporting: the exporter needs no more than the
    output's type from `forward`, and eager inference runs `postprocess` instead (see
    `DetectModel.forward`), so the eager result is never computed here.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):
        return boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thr, score_thr):
        return g.op(
            "NonMaxSuppression", boxes, scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float)),
        )


class DetectModel(nn.Module):
    """Image in, final detections out (batch 1). In eager mode it runs the evaluation
    post-processing itself, so comparing ONNX Runtime with eager output tests the exported
    graph against the code that computes mAP.

    With `original_size`, a second input `scale_factor` [1, 2] = (input / original height,
    input / original width), PaddleDetection's convention, maps the boxes back to the original
    image before NMS, exactly as evaluation and `nas predict` do."""

    def __init__(self, model: PicoDet, cfg: NMSConfig = EVAL_NMS, original_size: bool = False):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.original_size = original_size

    def forward(self, x: torch.Tensor, scale_factor: torch.Tensor | None = None):
        outs = self.model(x)
        cls_logits, reg_logits, priors = flatten_outputs(outs, self.model.num_classes, self.model.strides)
        counts = [o.shape[-2] * o.shape[-1] for o in outs]
        hw = tuple(x.shape[-2:])
        if not torch.onnx.is_in_onnx_export():
            sxy = None if scale_factor is None else scale_factor[:, [1, 0]]
            boxes, scores, labels = postprocess(cls_logits, reg_logits, priors, counts, hw, sxy, cfg=self.cfg)[0]
            return boxes, scores, labels
        return self._graph_postprocess(cls_logits[0], reg_logits[0], priors, counts, hw, scale_factor)

    def _graph_postprocess(self, cls_logits, reg_logits, priors, counts, hw, scale_factor):
        cfg = self.cfg
        scores, boxes = decode(cls_logits[None], reg_logits[None], priors, max_shape=hw if cfg.clip else None)
        keep = select_per_level(scores[0], counts, cfg.nms_pre)
        scores, boxes = scores[0, keep], boxes[0, keep]
        if scale_factor is not None:
            sy, sx = scale_factor[0, 0:1], scale_factor[0, 1:2]
            boxes = boxes / torch.cat([sx, sy, sx, sy])
        # Per class, only the nms_top_k best candidates enter NMS (Paddle's MultiClassNMS).
        k = min(cfg.nms_top_k, scores.shape[0])
        kth = scores.topk(k, dim=0).values[-1:]
        scores = torch.where(scores >= kth, scores, torch.zeros_like(scores))
        sel = _NonMaxSuppression.apply(boxes[None], scores.t()[None], cfg.nms_top_k, cfg.iou_thr, cfg.score_thr)
        cls_idx, box_idx = sel[:, 1], sel[:, 2]
        sel_scores = scores[box_idx, cls_idx]
        order = sel_scores.argsort(descending=True)[: cfg.keep_top_k]
        return boxes[box_idx[order]], sel_scores[order], cls_idx[order]


def onnx_metadata(model: PicoDet, meta: Mapping[str, Any] | None, *, postprocess: bool, original_size: bool,
                  cfg: NMSConfig = EVAL_NMS) -> dict[str, str]:
    """What a deployer needs besides the graph, as ONNX metadata properties (JSON values): the
    classes, the preprocessing, the thresholds baked into the graph, the architecture."""
    meta = dict(meta or {})
    names = class_names_of(meta, model.num_classes)
    props = {
        "producer": "picodet-nas",
        "class_names": names,
        "category_ids": meta.get("label_to_cat_id") or list(range(model.num_classes)),
        "input_size": model.arch.input_size,
        "preprocessing": meta.get("preprocessing", EVAL_PREPROCESSING),
        "arch": model.arch.to_dict(),
        "outputs": ("boxes [K,4] xyxy, scores [K], classes [K] (indices into class_names)" if postprocess else
                    "per level i: scores_i [B,HW,C] sigmoid, dists_i [B,HW,4*(reg_max+1)] box-distribution logits"),
    }
    if postprocess:
        props.update(score_thr=cfg.score_thr, iou_thr=cfg.iou_thr, keep_top_k=cfg.keep_top_k,
                     box_pixels="original image (input scale_factor = [input/height, input/width])"
                     if original_size else "network input (divide x by input/width, y by input/height)")
    return {k: json.dumps(v) for k, v in props.items()}


def export_onnx(model: PicoDet, path: str | Path, *, input_size: int, postprocess: bool = False,
                batch_size: int = 1, dynamic_batch: bool = True, cfg: NMSConfig = EVAL_NMS,
                original_size: bool = False, meta: Mapping[str, Any] | None = None) -> Path:
    """Export `model` (put in eval mode) to `path`; returns the path. `original_size` (with
    post-processing only) adds the `scale_factor` input; `meta` (a checkpoint's) supplies the
    class names and category ids of the metadata properties (`onnx_metadata`)."""
    if original_size and not postprocess:
        raise ValueError("original_size needs the post-processing")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = (torch.zeros(batch_size if not postprocess else 1, 3, input_size, input_size),)
    inputs = ["image"]
    if postprocess:
        wrapper: nn.Module = DetectModel(model, cfg, original_size)
        names = ["boxes", "scores", "classes"]
        dynamic = None
        if original_size:
            dummy += (torch.ones(1, 2),)
            inputs.append("scale_factor")
    else:
        wrapper = DeployModel(model)
        names = wrapper.output_names()
        dynamic = {n: {0: "batch"} for n in ["image", *names]} if dynamic_batch else None
    wrapper.eval()  # a wrapper left in training mode would put `model` back into training mode
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, dummy, buffer, dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=names, dynamic_axes=dynamic)
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in onnx_metadata(model, meta, postprocess=postprocess, original_size=original_size,
                                    cfg=cfg).items():
        graph.metadata_props.add(key=key, value=value)
    atomic_write_bytes(path, graph.SerializeToString())  # written once, whole: no half file is left behind
    return path
