"""Training and evaluation batches (the decode-once caches for search and BN recalibration are
in `data.cache`).

Determinism: the epoch's order comes from (seed, epoch); each sample's augmentation
from a Generator seeded with (seed, epoch, dataset index); each batch's size and
interpolation from (seed, epoch, batch number). No RNG state lives in a worker, and the
epoch travels with every index the sampler hands out, so the batches are the same with 0,
1 or 8 workers, with workers kept alive across epochs or started afresh, and a resumed run
replays an epoch exactly. Every DataLoader gets a private torch.Generator, because a
DataLoader otherwise draws its worker seed from the global torch RNG and would shift the
caller's random stream (model init, subnet sampling).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from picodet_nas.data.coco import CocoDetection
from picodet_nas.data.streams import BATCH_STREAM, ORDER_STREAM, SAMPLE_STREAM, stream
from picodet_nas.data.transforms import BatchRandomResize, TrainAugment, eval_resize, normalize, to_nchw
from picodet_nas.errors import DataError


class DetectionLoader(DataLoader):
    """A DataLoader whose DataErrors keep their one-line message when raised in a worker.

    DataLoader re-raises a worker's exception as the same type but with the whole
    worker traceback as its message, which would break the command line's promise
    of one line naming the bad file; the original message is the traceback's last line.
    The workers are shut down at once: left to garbage collection, an iterator whose
    worker has raised stalls for its join timeout.
    """

    def __iter__(self):
        iterator = super().__iter__()
        try:
            yield from iterator
        except DataError as error:
            if hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            message = str(error)
            if not message.startswith("Caught DataError"):
                raise
            last_line = message.rstrip().splitlines()[-1]
            raise DataError(last_line.split("DataError: ", 1)[-1]) from None


class EpochBatchSampler(Sampler):
    """One epoch's batches for one rank, each index tagged with its batch number and epoch.

    Like DistributedSampler: every rank draws the same permutation from (seed, epoch),
    pads it by wrapping around to a multiple of `world_size`, and takes every
    `world_size`-th index from `rank`; so all ranks get the same number of batches.
    The batch number travels with each index because the batch-level resize must
    draw its size from a stream keyed by it; the epoch, because the sampler runs in the
    main process while the augmentation and the resize may run in worker processes that
    outlive an epoch (`set_epoch` changes it for the next iteration).
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int, epoch: int, rank: int, world_size: int, drop_last: bool
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_indices(self) -> np.ndarray:
        order = stream(ORDER_STREAM, self.seed, self.epoch).permutation(self.num_samples)
        per_rank = -(-self.num_samples // self.world_size)
        padded = np.resize(order, per_rank * self.world_size)
        return padded[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = -(-self.num_samples // self.world_size)
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        indices = self._rank_indices()
        for batch in range(len(self)):
            chunk = indices[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield [(int(index), batch, self.epoch) for index in chunk]


class AugmentedSamples(Dataset):
    """Training samples after the per-sample augmentation, addressed by (index, batch number, epoch)."""

    def __init__(self, dataset: CocoDetection, *, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.augment = TrainAugment()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[dict, tuple[int, int]]:
        index, batch, epoch = key
        rng = stream(SAMPLE_STREAM, self.seed, epoch, index)
        return self.augment(self.dataset[index], rng), (batch, epoch)


class TrainCollate:
    """Batch-level resize, normalisation (unless `uint8`) and NCHW layout.

    The size is drawn from (seed, epoch, batch number) without the rank, so under DDP
    every rank resizes a step's batch to the same size and none waits on a larger one.
    """

    def __init__(self, sizes: Sequence[int], *, seed: int, interp: str = "batch", uint8: bool = False):
        self.resize = BatchRandomResize(sizes, interp)
        self.seed = seed
        self.uint8 = uint8

    def __call__(self, items: list[tuple[dict, tuple[int, int]]]) -> tuple[torch.Tensor, list[dict]]:
        samples = [sample for sample, _ in items]
        batch, epoch = items[0][1]
        rng = stream(BATCH_STREAM, self.seed, epoch, batch)
        images, boxes = self.resize([s["image"] for s in samples], [s["boxes"] for s in samples], rng)
        targets = [
            {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(np.ascontiguousarray(s["labels"]))}
            for s, b in zip(samples, boxes)
        ]
        return (images if self.uint8 else normalize(images)), targets


class TrainLoader(DetectionLoader):
    """The training batches of one rank; `set_epoch` chooses the epoch the next iteration gives."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def build_train_loader(
    dataset: CocoDetection,
    batch_size: int,
    sizes: Sequence[int],
    *,
    workers: int,
    seed: int,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    interp: str = "batch",
    uint8: bool = False,
    persistent_workers: bool = False,
    pin_memory: bool = False,
) -> TrainLoader:
    """Batches of one epoch for one rank: (images float32 [B,3,S,S], [{boxes, labels}, ...]);
    with `uint8`, the images before normalisation (a quarter of the bytes to move; normalise
    them where they are used, e.g. with `normalize` on the GPU).

    Boxes are xyxy in network-input pixels. The same (seed, epoch, rank, world_size) always
    gives the same batches, whatever the loader gave before: one loader can serve every epoch
    (`set_epoch` before iterating), and with `persistent_workers` (and workers > 0) keeps its
    worker processes from one epoch to the next. `pin_memory`: page-locked batches, for
    asynchronous copies to a GPU.
    """
    sampler = EpochBatchSampler(
        len(dataset), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size, drop_last=drop_last
    )
    if len(sampler) == 0:
        raise DataError(
            f"training set {dataset.ann_file} has {len(dataset)} images, too few for {world_size} rank(s) "
            f"with batch size {batch_size}; expected at least {batch_size * world_size}"
        )
    return TrainLoader(
        AugmentedSamples(dataset, seed=seed),
        batch_sampler=sampler,
        collate_fn=TrainCollate(sizes, seed=seed, interp=interp, uint8=uint8),
        num_workers=workers,
        persistent_workers=persistent_workers and workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )


class EvalSamples(Dataset):
    """Images resized for evaluation, as uint8 HxWx3, with what is needed to map boxes back."""

    def __init__(self, dataset: CocoDetection, size: int, indices: Sequence[int] | None = None,
                 resize_filter: str = "pillow"):
        self.dataset = dataset
        self.size = size
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.resize_filter = resize_filter

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[np.ndarray, dict]:
        index = self.indices[position]
        image = self.dataset.load_image(index)
        resized, scale = eval_resize(image, self.size, self.resize_filter)
        meta = {
            "image_id": self.dataset.image_ids[index],
            "scale_factor": scale,
            "orig_size": (image.shape[0], image.shape[1]),
        }
        return resized, meta


def collate_uint8(items: list[tuple[np.ndarray, dict]]) -> tuple[torch.Tensor, list[dict]]:
    return to_nchw([image for image, _ in items]), [meta for _, meta in items]


def collate_normalized(items: list[tuple[np.ndarray, dict]]) -> tuple[torch.Tensor, list[dict]]:
    images, metas = collate_uint8(items)
    return normalize(images), metas


def build_eval_loader(dataset: CocoDetection, size: int, batch_size: int, workers: int,
                      resize_filter: str = "pillow", *, rank: int = 0, world_size: int = 1, uint8: bool = False,
                      pin_memory: bool = False) -> DetectionLoader:
    """Every image in dataset order: (images float32 [B,3,S,S], metas); with `uint8`, the
    images before normalisation. `resize_filter`: the evaluation resize
    (`data.transforms.EVAL_RESIZE_FILTERS`).

    Each meta holds `image_id`, `scale_factor` (sx, sy) and `orig_size` (h, w); a box
    on the network input maps back to the original image as x / sx, y / sy.
    With `world_size` > 1, the share of `rank`: the batches one process would make (in
    dataset order, `batch_size` images each), batch b going to rank b mod world_size; so
    every image is in exactly one rank's batches, each batch exactly as one process has it.
    """
    starts = range(rank * batch_size, len(dataset), batch_size * world_size)
    return DetectionLoader(
        EvalSamples(dataset, size, resize_filter=resize_filter),
        batch_sampler=[list(range(s, min(s + batch_size, len(dataset)))) for s in starts],
        collate_fn=collate_uint8 if uint8 else collate_normalized,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )
