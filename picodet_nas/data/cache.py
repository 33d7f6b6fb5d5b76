"""Decoded-once image caches: a fixed evaluation subset for scoring many subnets (`EvalCache`)
and a fixed set of training images for BN recalibration (`CalibCache`)."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from picodet_nas.data.coco import CocoDetection
from picodet_nas.data.loader import DetectionLoader, EvalSamples, build_train_loader, collate_uint8
from picodet_nas.data.streams import fixed_subset
from picodet_nas.data.transforms import normalize


def normalized_batches(images: torch.Tensor, batch_size: int,
                       device: torch.device | str) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, normalised float32 batch) over uint8 `images` in order; each batch is moved to
    `device` before converting."""
    for start in range(0, len(images), batch_size):
        yield start, normalize(images[start : start + batch_size].to(device))


def decode_subset(
    dataset: CocoDetection, size: int, num_images: int | None, seed: int, workers: int
) -> tuple[torch.Tensor, list[dict]]:
    """Decode and resize the images of `fixed_subset(len(dataset), num_images, seed)` once,
    eval-style, into uint8 [N,3,S,S] plus metas."""
    indices = fixed_subset(len(dataset), num_images, seed)
    loader = DetectionLoader(
        EvalSamples(dataset, size, indices),
        batch_size=32,
        collate_fn=collate_uint8,
        num_workers=workers,
        generator=torch.Generator(),
    )
    images = torch.empty((len(indices), 3, size, size), dtype=torch.uint8)
    metas: list[dict] = []
    for batch, batch_metas in loader:
        images[len(metas) : len(metas) + len(batch)] = batch
        metas.extend(batch_metas)
    return images, metas


class EvalCache:
    """A fixed evaluation subset, decoded and resized once, for scoring many subnets.

    The NAS search scores hundreds of candidates on the same images; decoding is
    slower than the forward pass on a CPU, so it must happen once. At 320 the cache
    costs 300 KB per image (uint8). Score with pycocotools restricted to
    `image_ids` (`params.imgIds`), or the images left out count as misses.
    """

    def __init__(
        self, dataset: CocoDetection, size: int, *, num_images: int | None = None, seed: int = 0, workers: int = 0
    ):
        self.size = size
        self.images, self.metas = decode_subset(dataset, size, num_images, seed, workers)

    @classmethod
    def from_decoded(cls, size: int, images: torch.Tensor, metas: Sequence[dict]) -> "EvalCache":
        """A cache of images decoded elsewhere (uint8 [N, 3, size, size] and their metas)."""
        cache = cls.__new__(cls)
        cache.size, cache.images, cache.metas = size, images, list(metas)
        return cache

    def __len__(self) -> int:
        return len(self.metas)

    @property
    def image_ids(self) -> list[int]:
        return [meta["image_id"] for meta in self.metas]

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, list[dict]]]:
        """Normalised float32 batches in a fixed order, with their metas."""
        for start, images in normalized_batches(self.images, batch_size, device):
            yield images, self.metas[start : start + batch_size]


class CalibCache:
    """A fixed set of training images for BN recalibration, decoded and preprocessed once, so
    that every network recalibrated on it sees exactly the same pixels.

    augment=True (the default): the images as training sees them, with the training
    augmentation (crop, flip, colour) and the training resize's filters, resized to `size`: the
    first `num_images` images of training epoch 0's batches for `seed` (`build_train_loader`).
    The weights were trained on such inputs; statistics of whole images preprocessed for
    evaluation score lower (benchmarks/bn_treatments.py, README).
    augment=False: whole images with the evaluation preprocessing, a seed-determined subset.
    """

    def __init__(self, dataset: CocoDetection, size: int, *, num_images: int, seed: int = 0, workers: int = 0,
                 augment: bool = True, interp: str = "batch", batch_size: int = 8):
        self.size = size
        if not augment:
            self.images, _ = decode_subset(dataset, size, num_images, seed, workers)
            return
        chunks, seen = [], 0
        for images, _ in build_train_loader(dataset, min(batch_size, len(dataset)), (size,), workers=workers,
                                            seed=seed, epoch=0, drop_last=False, interp=interp, uint8=True):
            chunks.append(images[: num_images - seen])
            seen += len(chunks[-1])
            if seen >= num_images:
                break
        self.images = torch.cat(chunks)

    @classmethod
    def from_decoded(cls, size: int, images: torch.Tensor) -> "CalibCache":
        """A cache of images preprocessed elsewhere (uint8 [N, 3, size, size])."""
        cache = cls.__new__(cls)
        cache.size, cache.images = size, images
        return cache

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """Normalised float32 batches in a fixed order."""
        for _, images in normalized_batches(self.images, batch_size, device):
            yield images
