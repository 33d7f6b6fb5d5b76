"""A synthetic COCO-format detection dataset: shapes on cluttered, textured backgrounds.

It is the data of the quick start and of most tests, so it must be learnable in
minutes on a CPU, yet hard enough that a wider network scores better: six shape
classes, some of them alike at small sizes (circle/ring, star/cross), drawn with
random colour, rotation, squash and shading, partly occluding each other, over
smooth colour fields with stripes, noise and distractor strokes and blobs that are
not objects. Object sizes are log-uniform from 1/10 to 5/8 of the image side (32
to 200 px at 320), so every stride of the head (8, 16, 32, 64) has objects to find.

Category ids are deliberately non-contiguous to exercise the id <-> label mapping.
Everything derives from (seed, split, image index), so two runs with the same
arguments write byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from picodet_nas.errors import DataError

CATEGORIES = ((1, "circle"), (2, "square"), (3, "triangle"), (5, "star"), (8, "cross"), (13, "ring"))
SPLITS = ("train", "val")
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down, for anti-aliased edges
MAX_OBJECTS = 6
EMPTY_IMAGE_SHARE = 0.03
MIN_SIZE_DIVISOR = 10  # smallest object: 1/10 of the image side (32 px at 320, 19 px at 192: stride-8 objects)
MIN_VISIBLE_SHARE = 0.6  # objects drawn later leave at least this share of an earlier one's pixels visible
PLACEMENT_TRIES = 10
MIN_COLOR_DISTANCE = 120.0  # RGB distance between an object's colour and the background under it

BACKGROUND_CONTRAST = (0.3, 0.6)  # the colour field's deviations from its mean are scaled by this much
STRIPES_SHARE = 0.35  # share of backgrounds with a faint stripe pattern

_HALF_COVERED = [255 if v >= 128 else 0 for v in range(256)]  # lookup table: pixels at least half inside

DESCRIPTION = (
    "picodet-nas synthetic shapes: a COCO-format detection dataset written by "
    "picodet_nas.data.shapes.make_shapes_dataset. Six classes (circle, square, triangle, star, "
    "cross, ring; category ids 1, 2, 3, 5, 8, 13) with random colour, rotation, squash and shading, "
    "partly occluding each other, on smooth colour fields with stripes, noise and distractor strokes "
    "and blobs that are not objects. Object sizes are log-uniform from 1/10 to 5/8 of the image side; "
    "about 3% of images hold no object. Boxes are tight around each whole shape (amodal), area is the "
    "shape's pixel count. Deterministic for a seed."
)


def _shape_outline(name: str, radius: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygons (first filled, the rest cut out) of a shape centred at 0 with circumradius `radius`."""
    if name in ("circle", "ring"):
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        unit = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        if name == "circle":
            return [radius * unit]
        return [radius * unit, min(radius * rng.uniform(0.45, 0.7), radius - 1.5) * unit]
    if name == "square":
        corners = 4
        radii = np.full(corners, radius)
    elif name == "triangle":
        corners = 3
        radii = np.full(corners, radius)
    elif name == "star":
        corners = 10
        radii = np.where(np.arange(corners) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    else:  # cross: a plus sign whose arms are `arm` wide
        arm = radius * rng.uniform(0.22, 0.32)
        reach = math.sqrt(radius**2 - arm**2)
        xs = [arm, reach, reach, arm, arm, -arm, -arm, -reach, -reach, -arm, -arm, arm]
        ys = [arm, arm, -arm, -arm, -reach, -reach, -arm, -arm, arm, arm, reach, reach]
        return [np.stack([xs, ys], axis=1)]
    angles = np.arange(corners) * 2 * math.pi / corners
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def _render_mask(name: str, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased alpha mask (float32 in [0, 1], cropped to the shape) of one randomly posed shape."""
    polygons = _shape_outline(name, diameter / 2, rng)
    angle = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.8, 1.25)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polygons = [(p * [squash, 1 / squash]) @ rotation.T for p in polygons]

    half = int(math.ceil(np.abs(np.concatenate(polygons)).max())) + 2
    side = 2 * half * SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for k, polygon in enumerate(polygons):
        points = (polygon + half) * SUPERSAMPLE
        draw.polygon([tuple(xy) for xy in points.tolist()], fill=255 if k == 0 else 0)
    small = canvas.resize((2 * half, 2 * half), Image.Resampling.BOX)
    left, top, right, bottom = small.point(_HALF_COVERED).getbbox()
    return np.asarray(small.crop((left, top, right, bottom)), dtype=np.float32) / 255.0


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Float RGB HxWx3: a smooth random colour field, striped half of the time."""
    cells = int(rng.integers(2, 6))
    grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    mean = field.reshape(-1, 3).mean(axis=0)
    field = mean + np.float32(rng.uniform(*BACKGROUND_CONTRAST)) * (field - mean)
    if rng.random() < STRIPES_SHARE:
        angle = rng.uniform(0, math.pi)
        frequency = 2 * math.pi / rng.uniform(4, size / 4)
        axis = np.arange(size, dtype=np.float32) * np.float32(frequency)
        stripes = np.sin(axis[None, :] * np.float32(math.cos(angle)) + axis[:, None] * np.float32(math.sin(angle)))
        tint = (rng.uniform(5, 20) * rng.uniform(0.3, 1.0, 3)).astype(np.float32)
        field += stripes[:, :, None] * tint
    return field


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _draw_distractors(image: Image.Image, count: int, rng: np.random.Generator, *, blobs: bool) -> None:
    """Strokes (lines, arcs) and, optionally, irregular blobs: clutter that is never an object."""
    size = image.width
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        color = _random_color(rng)
        kind = rng.integers(3 if blobs else 2)
        if kind == 0:
            points = [tuple(p) for p in rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 5)), 2)).tolist()]
            draw.line(points, fill=color, width=int(rng.integers(1, 5)))
        elif kind == 1:
            x0, y0 = rng.uniform(-0.2 * size, size, 2)
            extent = rng.uniform(0.1 * size, 0.6 * size)
            start = rng.uniform(0, 360)
            end = start + rng.uniform(40, 200)
            draw.arc([x0, y0, x0 + extent, y0 + extent], start, end, fill=color, width=int(rng.integers(1, 4)))
        else:
            corners = int(rng.integers(10, 17))
            angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
            radii = rng.uniform(0.02, 0.08) * size * rng.uniform(0.4, 1.0, corners)
            squash = rng.uniform(0.3, 0.7)
            tilt = rng.uniform(0, math.pi)
            xs, ys = radii * np.cos(angles), radii * np.sin(angles) * squash
            outline = rng.uniform(0, size, 2) + np.stack(
                [xs * math.cos(tilt) - ys * math.sin(tilt), xs * math.sin(tilt) + ys * math.cos(tilt)], axis=1
            )
            draw.polygon([tuple(p) for p in outline.tolist()], fill=color)


def _hides_too_much(
    owner: np.ndarray, solid: np.ndarray, x0: int, y0: int, visible: list[int], full: list[int]
) -> bool:
    """Whether drawing `solid` at (x0, y0) would leave an earlier object less than MIN_VISIBLE_SHARE visible.

    `owner` maps each pixel to the object visible there (-1: background); judging by
    pixels rather than boxes matters for shapes that fill little of their box.
    """
    h, w = solid.shape
    under = owner[y0 : y0 + h, x0 : x0 + w][solid]
    under = under[under >= 0]
    if under.size == 0:
        return False
    hidden = np.bincount(under, minlength=len(visible))
    return any(v - c < MIN_VISIBLE_SHARE * f for v, c, f in zip(visible, hidden.tolist(), full))


def _object_color(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour that stands out from the mean colour of the background it will cover."""
    local = background.reshape(-1, 3).mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(10):
        color = rng.uniform(0, 255, 3).astype(np.float32)
        distance = float(np.linalg.norm(color - local))
        if distance >= MIN_COLOR_DISTANCE:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


def render_shapes_image(size: int, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its objects as dicts with `category_id`, `bbox` (xywh) and `area`."""
    clutter = Image.fromarray(np.clip(_background(size, rng), 0, 255).astype(np.uint8))
    _draw_distractors(clutter, int(rng.integers(0, 3)), rng, blobs=True)
    canvas = np.array(clutter, dtype=np.float32)

    count = 0 if rng.random() < EMPTY_IMAGE_SHARE else int(rng.integers(1, MAX_OBJECTS + 1))
    min_diameter = max(6.0, size / MIN_SIZE_DIVISOR)
    max_diameter = size * 0.625
    owner = np.full((size, size), -1, dtype=np.int16)
    visible: list[int] = []
    full: list[int] = []
    objects = []
    for _ in range(count):
        category = int(rng.integers(len(CATEGORIES)))
        diameter = math.exp(rng.uniform(math.log(min_diameter), math.log(max_diameter)))
        alpha = _render_mask(CATEGORIES[category][1], diameter, rng)
        solid = alpha >= 0.5
        h, w = alpha.shape
        for _ in range(PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if not _hides_too_much(owner, solid, x0, y0, visible, full):
                break
        else:
            continue
        region_owner = owner[y0 : y0 + h, x0 : x0 + w]
        hidden = np.bincount(region_owner[solid & (region_owner >= 0)], minlength=len(visible))
        visible = [v - c for v, c in zip(visible, hidden.tolist())]
        region_owner[solid] = len(objects)
        area = int(solid.sum())
        visible.append(area)
        full.append(area)

        color = _object_color(canvas[y0 : y0 + h, x0 : x0 + w], rng)
        shading = np.linspace(-1, 1, w, dtype=np.float32)[None, :] * math.cos(rng.uniform(0, 2 * math.pi))
        shading = shading + np.linspace(-1, 1, h, dtype=np.float32)[:, None] * math.sin(rng.uniform(0, 2 * math.pi))
        fill = color + (rng.uniform(0, 25) * shading)[:, :, None]
        region = canvas[y0 : y0 + h, x0 : x0 + w]
        region += (fill - region) * alpha[:, :, None]
        objects.append({"category_id": CATEGORIES[category][0], "bbox": [x0, y0, w, h], "area": area})

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(2, 5))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    _draw_distractors(image, int(rng.integers(0, 2)), rng, blobs=False)
    return image, objects


def _write_split(root: Path, split: int, count: int, first_image_id: int, size: int, seed: int) -> dict:
    name = SPLITS[split]
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split, index])
        image, objects = render_shapes_image(size, rng)
        file_name = f"{name}_{index:06d}.jpg"
        image.save(root / "images" / file_name, quality=JPEG_QUALITY)
        image_id = first_image_id + index
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
    return {
        "info": {
            "description": DESCRIPTION,
            "version": "1",
            "contributor": "picodet_nas.data.shapes",
            "split": name,
            "seed": seed,
            "image_size": size,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id, "name": cat_name, "supercategory": "shape"} for cat_id, cat_name in CATEGORIES],
    }


def make_shapes_dataset(
    out_dir: str | Path,
    *,
    train: int = 1500,
    val: int = 200,
    image_size: int = 320,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the shapes dataset in the simple layout and return its folder.

    The files are written into a temporary sibling folder that is renamed into place
    at the end, so an interrupted run never leaves a half-written dataset behind. A
    non-empty `out_dir` is refused unless `overwrite` is set.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"output folder {out_dir} is not empty; refusing to overwrite it (use overwrite)")
    if train < 1 or val < 1 or image_size < 32:
        raise DataError(
            f"shapes dataset needs train >= 1, val >= 1 and image_size >= 32; got {train}, {val}, {image_size}"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (staging / "images").mkdir()
        (staging / "annotations").mkdir()
        first_ids = {"train": 1, "val": train + 1}
        for split, count in enumerate((train, val)):
            data = _write_split(staging, split, count, first_ids[SPLITS[split]], image_size, seed)
            with open(staging / "annotations" / f"instances_{SPLITS[split]}.json", "w") as f:
                json.dump(data, f, separators=(",", ":"))
        (staging / "README.txt").write_text(DESCRIPTION + "\n")
        _replace_folder(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Rename `staging` to `out_dir`, moving an existing `out_dir` aside first and deleting it after."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rename(out_dir, retired / out_dir.name)
    os.rename(staging, out_dir)
    shutil.rmtree(retired)
