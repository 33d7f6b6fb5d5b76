"""PicoDet's training augmentation and evaluation preprocessing.

Per sample, in order: RandomCrop -> RandomFlip(0.5) -> RandomDistort; per batch:
BatchRandomResize -> normalize -> NCHW float32. Every random choice draws from a
`numpy.random.Generator` handed in by the caller, never from a global RNG, so that a
(seed, epoch, index) fully determines a sample whatever process computes it.

Resizing uses Pillow, whose bilinear, bicubic and Lanczos filters antialias when
shrinking (OpenCV's do not); the difference is small and the same in training and
evaluation.

A sample is a dict with at least `image` (uint8 HxWx3 RGB), `boxes` (float32 [n, 4]
xyxy pixels) and `labels` (int64 [n]); other keys pass through untouched. Images
without boxes pass through every transform.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The evaluation preprocessing in words and numbers, as checkpoints and ONNX files record it
# (`eval_resize`, then `normalize`).
EVAL_PREPROCESSING = {
    "resize": "straight to input_size x input_size (aspect ratio not kept), bicubic",
    "resize_filter": "pillow",
    "channel_order": "RGB",
    "layout": "NCHW",
    "scale": 1 / 255,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}
# The evaluation resize filters: Pillow's bicubic (antialiased when shrinking; what this package
# trains and evaluates with) and OpenCV's INTER_CUBIC (not antialiased; what PaddleDetection
# evaluates with, so the preprocessing of models imported from it).
EVAL_RESIZE_FILTERS = ("pillow", "opencv")
PADDLE_EVAL_PREPROCESSING = {
    **EVAL_PREPROCESSING,
    "resize": "straight to input_size x input_size (aspect ratio not kept), bicubic as OpenCV's INTER_CUBIC "
              "(not antialiased)",
    "resize_filter": "opencv",
}
CROP_THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
# Pillow's counterparts of OpenCV's {nearest, linear, area, cubic, lanczos4}; BOX plays INTER_AREA.
TRAIN_INTERPOLATIONS = (
    Image.Resampling.NEAREST,
    Image.Resampling.BILINEAR,
    Image.Resampling.BOX,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
)
EVAL_INTERPOLATION = Image.Resampling.BICUBIC

# RGB <-> YIQ, as PaddleDetection's RandomDistort.apply_hue uses them.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
_YIQ_TO_RGB = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])
_LUMA = np.array([0.299, 0.587, 0.114])


def iou_with_box(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of `boxes` [n, 4] with the single xyxy `box` [4]."""
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:], box[2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area_boxes = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    area_box = (box[2:] - box[:2]).prod()
    return inter / np.maximum(area_boxes + area_box - inter, 1e-10)


class RandomCrop:
    """SSD-style crop: try the IoU thresholds (and "no crop") in random order, 50 attempts each.

    A crop is accepted when it overlaps some box with IoU >= the threshold and at least
    one box center lies inside it; the boxes kept are those whose center is inside,
    clipped to the crop. When no threshold yields a crop, the sample is unchanged.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = CROP_THRESHOLDS,
        num_attempts: int = 50,
        scaling: tuple[float, float] = (0.3, 1.0),
        aspect_ratio: tuple[float, float] = (0.5, 2.0),
    ):
        self.options: list[float | None] = list(thresholds) + [None]  # None: leave the sample uncropped
        self.num_attempts = num_attempts
        self.scaling = scaling
        self.aspect_ratio = aspect_ratio

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        boxes = sample["boxes"]
        if len(boxes) == 0:
            return sample
        h, w = sample["image"].shape[:2]
        for option in rng.permutation(len(self.options)):
            threshold = self.options[option]
            if threshold is None:
                return sample
            for _ in range(self.num_attempts):
                crop = self._draw_crop(h, w, rng)
                if crop is None or iou_with_box(boxes, crop).max() < threshold:
                    continue
                cropped, keep = self._boxes_inside(boxes, crop)
                if keep.any():
                    x0, y0, x1, y1 = crop.astype(np.int64)
                    return {
                        **sample,
                        "image": sample["image"][y0:y1, x0:x1],
                        "boxes": cropped[keep],
                        "labels": sample["labels"][keep],
                    }
        return sample

    def _draw_crop(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray | None:
        scale = rng.uniform(*self.scaling)
        min_ar, max_ar = self.aspect_ratio
        ratio = rng.uniform(max(min_ar, scale**2), min(max_ar, scale**-2))
        crop_h = int(h * scale / math.sqrt(ratio))
        crop_w = int(w * scale * math.sqrt(ratio))
        if crop_h < 1 or crop_w < 1 or crop_h > h or crop_w > w:
            return None
        y0 = int(rng.integers(0, h - crop_h + 1))
        x0 = int(rng.integers(0, w - crop_w + 1))
        return np.array([x0, y0, x0 + crop_w, y0 + crop_h], dtype=np.float32)

    @staticmethod
    def _boxes_inside(boxes: np.ndarray, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in crop coordinates, clipped, and which of them have their center in the crop."""
        cropped = np.concatenate([np.maximum(boxes[:, :2], crop[:2]), np.minimum(boxes[:, 2:], crop[2:])], axis=1)
        cropped -= np.tile(crop[:2], 2)
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        keep = ((crop[:2] <= centers) & (centers < crop[2:])).all(axis=1)
        keep &= (cropped[:, :2] < cropped[:, 2:]).all(axis=1)
        return cropped.astype(np.float32), keep


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an image and its xyxy boxes left-right; applying it twice is the identity."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image[:, ::-1], flipped


class RandomFlip:
    """Horizontal flip with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.prob:
            return sample
        image, boxes = hflip(sample["image"], sample["boxes"])
        return {**sample, "image": image, "boxes": boxes}


class RandomDistort:
    """Brightness, contrast, saturation and hue, each applied with probability `prob`, in random order.

    Faithful to PaddleDetection's defaults, including their quirks: brightness is
    additive with delta ~ U(0.5, 1.5) on the 0-255 scale (nearly a no-op), contrast is
    a plain multiplication, saturation blends with the luma image, and hue rotates
    the YIQ chroma plane by delta*pi with delta ~ U(-18, 18), which is effectively a
    uniform rotation.

    Each of the four is an affine map of the RGB vector and Paddle never clips in
    between, so the chosen ones compose exactly into one 3x3 matrix plus offset,
    applied in a single pass by Pillow (far cheaper than four float passes). Unlike
    Paddle, the result is rounded and clipped to uint8, because the batch resize works
    on 8-bit images.
    """

    def __init__(
        self,
        brightness: tuple[float, float] = (0.5, 1.5),
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: tuple[float, float] = (-18.0, 18.0),
        prob: float = 0.5,
    ):
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.prob = prob

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        distortions = (self._brightness, self._contrast, self._saturation, self._hue)
        matrix, offset = np.eye(3), np.zeros(3)
        applied = False
        for which in rng.permutation(len(distortions)):
            if rng.random() < self.prob:
                step_matrix, step_offset = distortions[which](rng)
                matrix, offset = matrix @ step_matrix, offset @ step_matrix + step_offset
                applied = True
        if not applied:
            return sample
        return {**sample, "image": apply_color_affine(sample["image"], matrix, offset)}

    # Each returns (A, c) such that a pixel row vector p becomes p @ A + c.
    def _brightness(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.eye(3), np.full(3, rng.uniform(*self.brightness))

    def _contrast(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.eye(3) * rng.uniform(*self.contrast), np.zeros(3)

    def _saturation(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        delta = rng.uniform(*self.saturation)
        return delta * np.eye(3) + (1 - delta) * np.outer(_LUMA, np.ones(3)), np.zeros(3)

    def _hue(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        angle = rng.uniform(*self.hue) * math.pi
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        return (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).T, np.zeros(3)


def apply_color_affine(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """uint8 RGB image -> round(clip(pixel @ matrix + offset)), computed by Pillow in one pass."""
    pillow_matrix = np.concatenate([matrix.T, offset[:, None]], axis=1).ravel()
    converted = Image.fromarray(np.ascontiguousarray(image)).convert("RGB", tuple(float(v) for v in pillow_matrix))
    return np.asarray(converted)


class TrainAugment:
    """The per-sample part of PicoDet's training pipeline: RandomCrop, RandomFlip(0.5), RandomDistort."""

    def __init__(self):
        self.steps = (RandomCrop(), RandomFlip(0.5), RandomDistort())

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for step in self.steps:
            sample = step(sample, rng)
        return sample


def resize_square(image: np.ndarray, size: int, resample: Image.Resampling) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize straight to size x size (aspect ratio not kept); returns the image and (sx, sy)."""
    height, width = image.shape[:2]
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), resample))
    return resized, (size / width, size / height)


def scale_boxes(boxes: np.ndarray, scale: tuple[float, float], size: int) -> np.ndarray:
    """Map xyxy boxes through a (sx, sy) resize and clip them to the size x size image."""
    sx, sy = scale
    scaled = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    return np.clip(scaled, 0, size).astype(np.float32)


def to_nchw(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack equally sized uint8 HxWx3 images into a uint8 tensor [B, 3, H, W]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32: /255, minus ImageNet mean, over ImageNet std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


INTERPOLATION_MODES = ("image", "batch", "nearest", "bilinear", "box", "bicubic", "lanczos")


class BatchRandomResize:
    """One size per batch, drawn uniformly from `sizes`; the interpolation filter by `interp`.

    interp: "image" draws one of `TRAIN_INTERPOLATIONS` per image, "batch" one per batch (as
            PaddleDetection's BatchRandomResize with `random_interp`), or a filter name
            ("bicubic", ...) uses that filter for every image.

    A per-batch filter shifts the statistics of a whole batch at once (a nearest-neighbour
    batch has far more high-frequency energy than a box-filtered one); BN in training mode
    normalises the shift away, and eval mode, whose running statistics average over all
    filters, never sees it. Drawn per image, the filter stays an augmentation, and each batch's
    statistics stay close to the population's.

    Images go straight to a square (no letterbox), as PicoDet trains; boxes are scaled
    alike and clipped to the new image.
    """

    def __init__(self, sizes: Sequence[int], interp: str = "batch"):
        if not sizes:
            raise ValueError("BatchRandomResize needs at least one size")
        if interp not in INTERPOLATION_MODES:
            raise ValueError(f"interp must be one of {', '.join(INTERPOLATION_MODES)}, got {interp!r}")
        self.sizes = [int(s) for s in sizes]
        self.interp = interp

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        size = self.sizes[rng.integers(len(self.sizes))]
        per_batch = TRAIN_INTERPOLATIONS[rng.integers(len(TRAIN_INTERPOLATIONS))]
        fixed = None if self.interp in ("image", "batch") else Image.Resampling[self.interp.upper()]
        resized, scaled = [], []
        for image, image_boxes in zip(images, boxes):
            if fixed is not None:
                resample = fixed
            elif self.interp == "batch":
                resample = per_batch
            else:
                resample = TRAIN_INTERPOLATIONS[rng.integers(len(TRAIN_INTERPOLATIONS))]
            out, scale = resize_square(image, size, resample)
            resized.append(out)
            scaled.append(scale_boxes(image_boxes, scale, size))
        return to_nchw(resized), scaled


def resize_square_cubic(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """`resize_square` with OpenCV's INTER_CUBIC: the 4x4 cubic kernel (a = -0.75) sampled at
    the half-pixel-aligned source position, edges replicated, no antialiasing when shrinking,
    rounded back to uint8."""
    height, width = image.shape[:2]
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    resized = y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return resized, (size / width, size / height)


def eval_resize(image: np.ndarray, size: int, resize_filter: str = "pillow") -> tuple[np.ndarray, tuple[float, float]]:
    """Evaluation preprocessing: straight to size x size with bicubic; (sx, sy) maps boxes back.

    A box predicted on the network input maps to the original image as
    x / sx, y / sy. `resize_filter`: one of `EVAL_RESIZE_FILTERS`.
    """
    if resize_filter == "opencv":
        return resize_square_cubic(image, size)
    if resize_filter != "pillow":
        raise ValueError(f"resize_filter must be one of {EVAL_RESIZE_FILTERS}, got {resize_filter!r}")
    return resize_square(image, size, EVAL_INTERPOLATION)
