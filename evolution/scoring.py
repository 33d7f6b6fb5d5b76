"""Scoring one candidate: inherited weights, recalibrated BN, COCO mAP on a fixed held-out set.

A `CandidateScorer` lives in one process (a Ray actor, or the driver with `--workers 0`) and
scores many candidates, so everything that does not depend on the candidate is done once:

* the supernet is built and loaded once;
* images are decoded and resized once per input size, lazily, into uint8 caches
  (`BNCalibration`'s for the calibration images, `EvalCache` for the held-out images): decoding is
  slower than a small detector's forward pass on a CPU, and a search scores hundreds of
  candidates on the same images.

Per candidate: `supernet.extract(arch)` gives the static network with the inherited weights
(a copy: the shared supernet is never modified), `BNCalibration` (the BN treatment of every
scored network, stand-alone ones included) sets its BN statistics to the exact statistics of its
own activations, as eval mode produces them, on the calibration images, and
`picodet_nas.engine.evaluate.predict_batches` (the one evaluation path of training and
`nas eval`) gives the detections scored with pycocotools on the held-out image ids only.

Nothing in this is random, the image sets and their order are fixed, and BN recalibration is
exact (independent of batching), so a candidate's score does not depend on which worker
scored it or when; each worker runs PyTorch with the same number of threads.

Params and FLOPs are those `nas summary` reports (`picodet_nas.summary`: every learnable
tensor; FLOPs = 2 x the multiply-adds thop counts, BN included, the published convention),
counted on the extracted static network. thop costs 0.2-0.35 s per quickstart candidate
(a batch-1 forward pass on a copy), a small part of scoring on the default 256 + 500 images,
and keeps `best.yaml` equal to what `nas summary` and `nas retrain` report for the same arch.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from picodet_nas.arch import Arch
from picodet_nas.checkpoint import apply_state
from picodet_nas.data import CocoDetection, EvalCache
from picodet_nas.engine.bn_calibration import BNCalibration
from picodet_nas.engine.evaluate import predict_batches
from picodet_nas.evaluation import coco_evaluate
from picodet_nas.space import SearchSpace
from picodet_nas.summary import count_macs, count_params
from supernet import Supernet


@dataclass(frozen=True)
class ScoringData:
    """Where a scorer finds its images: two small COCO files that list exactly the calibration
    images and the held-out images scored on (both from the training split: the supernet's
    search split and the rest), written once by the
    driver (`evolution.data.prepare_subsets`), so that no worker parses the full annotation
    files and every worker sees the same images in the same order."""

    calib_ann: str
    calib_images: str
    val_ann: str
    val_images: str
    batch_size: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_id() -> str:
    """`host:pid` of this process, recorded with every score."""
    return f"{socket.gethostname()}:{os.getpid()}"


def tensors_from(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Torch tensors from a state dict of tensors or numpy arrays.

    Arrays that Ray hands out zero-copy are read-only; `torch.from_numpy` warns about that,
    but `load_state_dict` only reads them (it copies into the parameters), so the views are safe.
    """
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for k, v in state.items():
            out[k] = torch.from_numpy(v) if isinstance(v, np.ndarray) else v
    return out


class NetworkScorer:
    """Scores networks on one `ScoringData`: exact BN statistics on its calibration images
    (`BNCalibration`), then COCO mAP on its held-out images; images decoded once per size.
    The one scoring path of a candidate and of a network trained alone (benchmarks)."""

    def __init__(self, data: ScoringData | Mapping[str, Any]):
        self.data = data if isinstance(data, ScoringData) else ScoringData(**data)
        self._calibration: BNCalibration | None = None
        self._val_set: CocoDetection | None = None
        self._eval: dict[int, EvalCache] = {}

    @property
    def calibration(self) -> BNCalibration:
        if self._calibration is None:
            calib_set = CocoDetection(self.data.calib_ann, self.data.calib_images)
            self._calibration = BNCalibration(calib_set, len(calib_set))
        return self._calibration

    def eval_cache(self, size: int) -> EvalCache:
        if size not in self._eval:
            self._eval[size] = EvalCache(self.val_set, size)
        return self._eval[size]

    @property
    def val_set(self) -> CocoDetection:
        if self._val_set is None:
            self._val_set = CocoDetection(self.data.val_ann, self.data.val_images)
        return self._val_set

    @torch.no_grad()
    def score(self, model: torch.nn.Module, size: int) -> dict[str, float]:
        """The twelve COCO numbers of `model` (a static network, on the CPU; its BN statistics are
        overwritten) at input `size`."""
        held_out = self.eval_cache(size)
        self.calibration(model, size)
        model.eval()
        detections = predict_batches(model, held_out.batches(self.data.batch_size),
                                     self.val_set.label_to_cat_id, torch.device("cpu"))
        return coco_evaluate(self.val_set.coco, detections, held_out.image_ids)


class CandidateScorer:
    """Scores candidates of one space with the weights of one supernet."""

    def __init__(self, space_definition: Mapping[str, Any], num_classes: int, state: Mapping[str, Any],
                 data: ScoringData | Mapping[str, Any], threads: int | None = 1):
        if threads:
            torch.set_num_threads(int(threads))  # Ray sets OMP_NUM_THREADS only for fresh workers
        self.scorer = NetworkScorer(data)
        self.data = self.scorer.data
        self.space = SearchSpace.from_dict(dict(space_definition), source="supernet space")
        self.supernet = Supernet(self.space, num_classes)
        apply_state(self.supernet, tensors_from(state), "supernet weights")
        self.supernet.eval()
        with warnings.catch_warnings():  # thop (used for FLOPs) warns about distutils when imported
            warnings.simplefilter("ignore", DeprecationWarning)
            import thop  # noqa: F401
        self.worker = worker_id()

    @torch.no_grad()
    def score(self, arch: Arch | Mapping[str, Any]) -> dict[str, Any]:
        """{map, map50, params, flops, worker, score_seconds} of `arch` (an Arch or its dict)."""
        arch = arch if isinstance(arch, Arch) else Arch.from_dict(arch)
        started = time.perf_counter()
        model = self.supernet.extract(arch)
        stats = self.scorer.score(model, arch.input_size)
        macs = count_macs(model, arch.input_size)
        return {
            "map": float(stats["mAP"]),
            "map50": float(stats["mAP50"]),
            "params": int(count_params(model)),
            "flops": 2.0 * float(sum(macs.values())),
            "worker": self.worker,
            "score_seconds": round(time.perf_counter() - started, 4),
        }
