"""The BN treatment of every network whose score is reported: exact statistics of its own
weights on fixed training images, computed the way eval mode uses them.

`BNCalibration` holds a fixed set of training images per input size, augmented as training
augments them and resized to that size (`CalibCache`), decoded once, and recalibrates a model
with `picodet_nas.bn_stats.recalibrate_bn`. Augmented crops rather than whole images
preprocessed for evaluation: on every model measured (benchmarks/bn_treatments.py) the
statistics of the inputs the weights were trained on scored higher on the validation images
than those of whole evaluation-style images, even than statistics taken on the validation
images themselves. The same object serves the end of every
`nas retrain` evaluation (the saved weights carry the recomputed statistics, so `nas eval`
reproduces the reported numbers), the supernet's landmark subnets and every candidate of a
search; so a stand-alone network and a subnet are scored alike.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..bn_stats import recalibrate_bn
from ..data import CalibCache, CocoDetection

DEFAULT_CALIB_IMAGES = 256  # exact statistics; the README's calibration-size benchmark chose it
CALIB_BATCH_SIZE = 32


class BNCalibration:
    """`dataset`: the training images, decoded per input size on first use; None when `caches`
    (already preprocessed images per size, e.g. from another process) hold every size asked for."""

    def __init__(self, dataset: CocoDetection | None, num_images: int, *, seed: int = 0,
                 device: torch.device | str = "cpu", workers: int = 0, interp: str = "batch",
                 caches: Mapping[int, CalibCache] | None = None):
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.dataset, self.num_images, self.seed = dataset, num_images, seed
        self.device, self.workers = torch.device(device), workers
        self.interp = interp
        self._caches: dict[int, CalibCache] = dict(caches or {})

    def cache(self, size: int) -> CalibCache:
        """The calibration images at `size`, decoded on first use."""
        if size not in self._caches:
            if self.dataset is None:
                raise ValueError(f"no calibration images at input size {size} (have {sorted(self._caches)})")
            self._caches[size] = CalibCache(self.dataset, size, num_images=self.num_images, seed=self.seed,
                                            workers=self.workers, interp=self.interp)
        return self._caches[size]

    def __call__(self, model: nn.Module, size: int) -> int:
        """Recalibrate `model` (a static network, or a supernet with its subnet active) at `size`;
        returns the number of images used."""
        cache = self.cache(size)
        return recalibrate_bn(model, cache.batches(CALIB_BATCH_SIZE, self.device), len(cache), mode="eval")
