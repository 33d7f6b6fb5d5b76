"""Scoring one candidate: inherited weights, recalibrated BN, COCO mAP on a fixed held-out set.

A `CandidateScorer` lives in one process (a Ray actor, or the driver with `--workers 0`) and
scores many candidates, so everything that does not depend on the candidate is done once:

* the supernet is built and loaded once;
* images are decoded and resized once per input size into uint8 caches (`BNCalibration`'s for
  the calibration images, `EvalCache` for the held-out images): decoding is slower than a small
  detector's forward pass on a CPU, and a search scores hundreds of candidates on the same
  images. In this process they are decoded lazily; Ray workers get them from the driver
  (`NetworkScorer.decoded_images`, through the object store), so a node holds one copy.

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
counted on the extracted static network. thop costs one batch-1 forward pass on a copy, a
small part of scoring a candidate on hundreds of images, and keeps `best.yaml` equal to what
`nas summary` and `nas retrain` report for the same arch.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO

from picodet_nas.arch import Arch
from picodet_nas.checkpoint import apply_state
from picodet_nas.data import CalibCache, CocoDetection, EvalCache
from picodet_nas.engine.bn_calibration import BNCalibration
from picodet_nas.engine.distributed import resolve_device
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
    The one scoring path of a candidate and of a network trained alone (benchmarks).

    `images`: what `decoded_images` returned in another process (the search's driver): the
    preprocessed images of every input size and the scored images' annotations. A scorer built
    from them reads no file, so a Ray worker needs neither the data set nor the driver's paths,
    and every worker of a node maps the same arrays from Ray's object store instead of decoding
    its own copy. Without `images`, the files of `data` are read and decoded on first use."""

    def __init__(self, data: ScoringData | Mapping[str, Any], *, device: str | torch.device = "cpu",
                 images: Mapping[str, Any] | None = None):
        self.data = data if isinstance(data, ScoringData) else ScoringData(**data)
        self.device = torch.device(resolve_device(device))
        self._calibration: BNCalibration | None = None
        self._val_set: CocoDetection | None = None
        self._eval: dict[int, EvalCache] = {}
        self._coco = self._label_to_cat_id = None
        if images is not None:
            sizes = images["sizes"]
            self._eval = {int(k): EvalCache.from_decoded(int(k), _tensor(v["eval"]), v["metas"])
                          for k, v in sizes.items()}
            calib = {int(k): CalibCache.from_decoded(int(k), _tensor(v["calib"])) for k, v in sizes.items()}
            self._calibration = BNCalibration(None, max(len(c) for c in calib.values()), device=self.device,
                                              caches=calib)
            self._coco = COCO()
            self._coco.dataset = images["val_doc"]
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco.createIndex()
            self._label_to_cat_id = list(images["label_to_cat_id"])

    @property
    def calibration(self) -> BNCalibration:
        if self._calibration is None:
            calib_set = CocoDetection(self.data.calib_ann, self.data.calib_images)
            self._calibration = BNCalibration(calib_set, len(calib_set), device=self.device)
        return self._calibration

    def eval_cache(self, size: int) -> EvalCache:
        if size not in self._eval:
            if self._coco is not None:
                raise ValueError(f"no scoring images at input size {size} (have {sorted(self._eval)})")
            self._eval[size] = EvalCache(self.val_set, size)
        return self._eval[size]

    @property
    def val_set(self) -> CocoDetection:
        if self._val_set is None:
            self._val_set = CocoDetection(self.data.val_ann, self.data.val_images)
        return self._val_set

    def decoded_images(self, sizes: Sequence[int]) -> dict[str, Any]:
        """The preprocessed images of every size in `sizes` and the scored images' annotations,
        as plain data (numpy arrays, dicts): what `NetworkScorer(data, images=...)` takes."""
        return {"val_doc": self.val_set.coco.dataset, "label_to_cat_id": list(self.val_set.label_to_cat_id),
                "sizes": {int(size): {"calib": self.calibration.cache(size).images.numpy(),
                                      "eval": self.eval_cache(size).images.numpy(),
                                      "metas": self.eval_cache(size).metas} for size in sizes}}

    @torch.no_grad()
    def score(self, model: torch.nn.Module, size: int) -> dict[str, float]:
        """The twelve COCO numbers of `model` (a static network; moved to the scorer's device, its
        BN statistics overwritten) at input `size`."""
        coco, detections, image_ids = self.detect(model, size)
        return coco_evaluate(coco, detections, image_ids)

    @torch.no_grad()
    def detect(self, model: torch.nn.Module, size: int) -> tuple[Any, list[dict], list[int]]:
        """(ground truth COCO, detections, scored image ids) of `model` at `size`, calibrated as
        `score` calibrates it: for figures computed over subsets of the scored images."""
        held_out = self.eval_cache(size)
        model.to(self.device)
        self.calibration(model, size)
        model.eval()
        coco, label_to_cat_id = (self._coco, self._label_to_cat_id) if self._coco is not None else (
            self.val_set.coco, self.val_set.label_to_cat_id)
        detections = predict_batches(model, held_out.batches(self.data.batch_size, self.device), label_to_cat_id,
                                     self.device)
        return coco, detections, list(held_out.image_ids)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over `array` without a copy (read-only arrays from Ray's object store included:
    the caches are only read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class CandidateScorer:
    """Scores candidates of one space with the weights of one supernet, on `device` (the supernet
    itself stays on the CPU, where each candidate is extracted and its FLOPs counted)."""

    def __init__(self, space_definition: Mapping[str, Any], num_classes: int, state: Mapping[str, Any],
                 data: ScoringData | Mapping[str, Any], threads: int | None = 1, *,
                 device: str | torch.device = "cpu", images: Mapping[str, Any] | None = None):
        if threads:
            torch.set_num_threads(int(threads))  # Ray sets OMP_NUM_THREADS only for fresh workers
        self.scorer = NetworkScorer(data, device=device, images=images)
        self.data = self.scorer.data
        self.space = SearchSpace.from_dict(dict(space_definition), source="supernet space")
        state = tensors_from(state)
        self.supernet = Supernet.for_state(self.space, num_classes, state)
        apply_state(self.supernet, state, "supernet weights")
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
        macs = count_macs(model, arch.input_size)
        params = count_params(model)
        stats = self.scorer.score(model, arch.input_size)
        return {
            "map": float(stats["mAP"]),
            "map50": float(stats["mAP50"]),
            "params": int(params),
            "flops": 2.0 * float(sum(macs.values())),
            "worker": self.worker,
            "score_seconds": round(time.perf_counter() - started, 4),
        }
