"""Data layer: layouts, COCO loading and validation, augmentation, loaders, caches, shapes generator."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from picodet_nas.data.classes import Classes, check_same_classes, label_mapping
from picodet_nas.data.coco import CocoDetection
from picodet_nas.data.layout import resolve_data
from picodet_nas.data.cache import CalibCache, EvalCache
from picodet_nas.data.loader import EpochBatchSampler, build_eval_loader, build_train_loader
from picodet_nas.data.shapes import CATEGORIES, make_shapes_dataset
from picodet_nas.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchRandomResize,
    RandomCrop,
    RandomDistort,
    RandomFlip,
    TrainAugment,
    eval_resize,
    hflip,
)
from picodet_nas.errors import DataError

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"


# ----------------------------------------------------------------------------- helpers


def write_coco(
    root: Path, images: list[dict], annotations: list[dict], categories: list[dict], name: str = "train"
) -> Path:
    """Write a simple-layout annotation file; images are described by dicts with optional 'mode'."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for img in images:
        mode = img.get("mode", "RGB")
        if mode is not None:
            Image.new(mode, (img["width"], img["height"])).save(root / "images" / img["file_name"])
        entries.append({k: img[k] for k in ("id", "file_name", "width", "height")})
    ann_file = root / "annotations" / f"instances_{name}.json"
    ann_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return ann_file


def ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


CATS = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 90, "name": "ninety"}]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", train=12, val=4, image_size=96, seed=3)


@pytest.fixture(scope="module")
def shapes_train(shapes_dir) -> CocoDetection:
    return CocoDetection(shapes_dir / "annotations" / "instances_train.json", shapes_dir / "images")


# ----------------------------------------------------------------------------- layout


def test_resolve_coco2017_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    paths = resolve_data(tmp_path)
    assert paths.train_ann == tmp_path / "annotations" / "instances_train2017.json"
    assert paths.val_ann == tmp_path / "annotations" / "instances_val2017.json"
    assert paths.train_images == tmp_path / "train2017"
    assert paths.val_images == tmp_path / "val2017"


def test_resolve_simple_layout_and_overrides(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{}")
    paths = resolve_data(tmp_path, val_ann=tmp_path / "other.json")
    assert paths.train_ann == tmp_path / "annotations" / "instances_train.json"
    assert paths.val_ann == tmp_path / "other.json"
    assert paths.train_images == paths.val_images == tmp_path / "images"


def test_resolve_all_explicit_needs_no_folder(tmp_path):
    paths = resolve_data(None, train_ann="a.json", val_ann="b.json", train_images="x", val_images="y")
    assert paths.val_images == Path("y")


def test_resolve_folder_in_no_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="instances_\\{train,val\\}2017.json") as err:
        resolve_data(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "instances_{train,val}.json" in str(err.value)


def test_resolve_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nope"):
        resolve_data(tmp_path / "nope")


# ----------------------------------------------------------------------------- COCO loading


def test_noncontiguous_ids_map_and_back(tmp_path):
    images = [{"id": 5, "file_name": "a.png", "width": 40, "height": 30}]
    anns = [ann(1, 5, 90, [1, 1, 10, 10]), ann(2, 5, 3, [2, 2, 5, 5]), ann(3, 5, 7, [0, 0, 4, 4])]
    ds = CocoDetection(write_coco(tmp_path, images, anns, CATS), tmp_path / "images")
    assert ds.num_classes == 3
    assert ds.label_to_cat_id == [3, 7, 90]
    assert ds.class_names == ["three", "seven", "ninety"]
    assert ds.cat_id_to_label == {3: 0, 7: 1, 90: 2}
    sample = ds[0]
    assert sample["labels"].tolist() == [2, 0, 1]
    assert [ds.label_to_cat_id[label] for label in sample["labels"]] == [90, 3, 7]
    np.testing.assert_array_equal(sample["boxes"][0], [1, 1, 11, 11])
    assert sample["boxes"].dtype == np.float32 and sample["labels"].dtype == np.int64
    assert sample["image_id"] == 5 and sample["orig_size"] == (30, 40)



def test_class_checks_name_the_first_differing_field():
    model = Classes.of_checkpoint({"num_classes": 2, "class_names": ["a", "b"], "label_to_cat_id": [1, 3]}, "m.pt")
    check_same_classes(model, Classes.of("d", ["a", "b"], [1, 3]), "hint")
    check_same_classes(Classes.of("old.pt", None, None, count=2), Classes.of("d", ["a", "b"], [1, 3]), "hint")
    with pytest.raises(DataError, match=r"^m.pt has 2 classes, d has 3: hint$"):
        check_same_classes(model, Classes.of("d", ["a", "b", "c"], [1, 3, 4]), "hint")
    with pytest.raises(DataError, match=r"^m.pt has category ids \[1, 3\], d has \[1, 2\]: hint$"):
        check_same_classes(model, Classes.of("d", ["a", "b"], [1, 2]), "hint")
    with pytest.raises(DataError, match=r"^m.pt has classes \['a', 'b'\], d has \['a', 'c'\]: hint$"):
        check_same_classes(model, Classes.of("d", ["a", "c"], [1, 3]), "hint")
    # an evaluation only needs the model's categories to exist in the data
    assert label_mapping(model, Classes.of("d", ["a", "x", "b"], [1, 2, 3])) == [1, 3]
    with pytest.raises(DataError, match="d lacks id 3"):
        label_mapping(model, Classes.of("d", ["a", "x"], [1, 2]))
    assert label_mapping(Classes.of("old.pt", None, None, count=2), Classes.of("d", ["a", "x"], [5, 9])) == [5, 9]
    with pytest.raises(DataError, match="old.pt predicts 2 classes, d has 1 categories"):
        label_mapping(Classes.of("old.pt", None, None, count=2), Classes.of("d", ["a"], [5]))


def test_crowd_ignored_and_empty_images_kept(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
    ]
    anns = [ann(1, 1, 3, [1, 1, 10, 10], iscrowd=1), ann(2, 1, 3, [5, 5, 10, 10], iscrowd=0)]
    ds = CocoDetection(write_coco(tmp_path, images, anns, CATS), tmp_path / "images")
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[0]["boxes"], [[5, 5, 15, 15]])
    empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 2, "the evaluator must still see the crowd box"


def test_missing_area_and_iscrowd_are_filled_for_cocoeval(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    ds = CocoDetection(write_coco(tmp_path, images, [ann(1, 1, 3, [1, 1, 10, 4])], CATS), tmp_path / "images")
    stored = ds.coco.anns[1]
    assert stored["area"] == 40 and stored["iscrowd"] == 0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_any_image_mode_loads_as_rgb(tmp_path, mode):
    suffix = "jpg" if mode == "CMYK" else "png"
    images = [{"id": 1, "file_name": f"a.{suffix}", "width": 20, "height": 10, "mode": mode}]
    ds = CocoDetection(write_coco(tmp_path, images, [], CATS), tmp_path / "images")
    image = ds.load_image(0)
    assert image.shape == (10, 20, 3) and image.dtype == np.uint8


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 2, "height": 1, "mode": None}]
    ann_file = write_coco(tmp_path, images, [], CATS)
    Image.fromarray(np.array([[0, 32768]], dtype=np.uint16)).save(tmp_path / "images" / "a.png")
    image = CocoDetection(ann_file, tmp_path / "images").load_image(0)
    assert image[0, 0].tolist() == [0, 0, 0] and image[0, 1].tolist() == [128, 128, 128]


def test_bad_boxes_dropped_and_clipped_with_one_warning(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    anns = [
        ann(1, 1, 3, [1, 1, 0, 10]),  # zero width
        ann(2, 1, 3, [1, 1, 10, -2]),  # negative height
        ann(3, 1, 3, [50, 5, 10, 10]),  # entirely outside
        ann(4, 1, 3, [35, 25, 10, 10]),  # across the corner: clipped
        ann(5, 1, 3, [0, 0, 40, 30]),  # exactly the image: untouched
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(write_coco(tmp_path, images, anns, CATS), tmp_path / "images")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "instances_train.json" in message
    assert "dropped 2 boxes with zero or negative" in message
    assert "dropped 1 boxes lying entirely outside" in message
    assert "clipped 1 boxes" in message
    np.testing.assert_array_equal(ds[0]["boxes"], [[35, 25, 40, 30], [0, 0, 40, 30]])


def test_clean_file_gives_no_warning(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoDetection(write_coco(tmp_path, images, [ann(1, 1, 3, [0, 0, 40, 30])], CATS), tmp_path / "images")


# ----------------------------------------------------------------------------- bad input: a DataError naming the file


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="instances_missing.json"):
        CocoDetection(tmp_path / "instances_missing.json", tmp_path)


def test_malformed_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json.*not valid JSON"):
        CocoDetection(bad, tmp_path)


def test_empty_categories(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}]
    with pytest.raises(DataError, match="instances_train.json.*'categories' is empty"):
        CocoDetection(write_coco(tmp_path, images, [], []), tmp_path / "images")


@pytest.mark.parametrize(
    "section, entry, key",
    [
        ("images", {"id": 1, "width": 4, "height": 4}, "file_name"),
        ("annotations", {"id": 1, "image_id": 1, "category_id": 3}, "bbox"),
        ("categories", {"id": 3}, "name"),
    ],
)
def test_missing_required_key(tmp_path, section, entry, key):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
        "annotations": [],
        "categories": [{"id": 3, "name": "three"}],
    }
    data[section] = [entry]
    ann_file = tmp_path / "instances_x.json"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"instances_x.json: {section}\\[0\\] lacks required key '{key}'"):
        CocoDetection(ann_file, tmp_path)


def test_duplicate_annotation_ids(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}]
    anns = [ann(1, 1, 3, [0, 0, 1, 1]), ann(1, 1, 3, [1, 1, 1, 1])]
    with pytest.raises(DataError, match="instances_train.json: 'annotations' has duplicate ids"):
        CocoDetection(write_coco(tmp_path, images, anns, CATS), tmp_path / "images")


def test_annotation_of_unknown_category(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}]
    with pytest.raises(DataError, match="instances_train.json.*category_id 4"):
        CocoDetection(write_coco(tmp_path, images, [ann(1, 1, 4, [0, 0, 1, 1])], CATS), tmp_path / "images")


def test_missing_image_file(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 4, "height": 4},
        {"id": 2, "file_name": "gone.png", "width": 4, "height": 4, "mode": None},
    ]
    ds = CocoDetection(write_coco(tmp_path, images, [], CATS), tmp_path / "images")
    with pytest.raises(DataError, match="1 of 2 image files .* missing, first: .*gone.png"):
        ds.check_images()
    with pytest.raises(DataError, match="image file not found: .*gone.png"):
        ds[1]


def test_non_image_file(tmp_path):
    images = [{"id": 1, "file_name": "notes.jpg", "width": 4, "height": 4, "mode": None}]
    ann_file = write_coco(tmp_path, images, [], CATS)
    (tmp_path / "images" / "notes.jpg").write_text("this is not a picture")
    ds = CocoDetection(ann_file, tmp_path / "images")
    with pytest.raises(DataError, match="cannot decode image file .*notes.jpg"):
        ds.check_images()
    with pytest.raises(DataError, match="notes.jpg"):
        ds.load_image(0)


def test_image_size_disagreeing_with_annotation(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 4, "height": 4, "mode": None}]
    ann_file = write_coco(tmp_path, images, [], CATS)
    Image.new("RGB", (8, 4)).save(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match="a.png is 8x4 pixels but .*instances_train.json says 4x4"):
        CocoDetection(ann_file, tmp_path / "images").check_images()


def test_missing_image_folder(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}]
    ann_file = write_coco(tmp_path, images, [], CATS)
    with pytest.raises(DataError, match="image folder not found: .*elsewhere"):
        CocoDetection(ann_file, tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- transforms


def painted_sample(rng: np.random.Generator) -> dict:
    """An image whose non-overlapping boxes are each painted in their label's colour."""
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    boxes, labels = [], []
    for label, (x, y) in enumerate([(5, 5), (90, 10), (20, 70), (110, 80)]):
        w, h = rng.integers(12, 35, 2)
        image[y : y + h, x : x + w] = palette[label]
        boxes.append([x, y, x + w, y + h])
        labels.append(label)
    sample = {"image": image, "boxes": np.array(boxes, np.float32), "labels": np.array(labels, np.int64)}
    return sample, palette


def test_flip_twice_is_identity():
    sample, _ = painted_sample(np.random.default_rng(0))
    image, boxes = hflip(*hflip(sample["image"], sample["boxes"]))
    np.testing.assert_array_equal(image, sample["image"])
    np.testing.assert_array_equal(boxes, sample["boxes"])


def test_crop_flip_resize_keep_boxes_on_their_objects():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sample, palette = painted_sample(rng)
        out = RandomFlip(0.5)(RandomCrop()(sample, rng), rng)
        h, w = out["image"].shape[:2]
        assert len(out["boxes"]) == len(out["labels"]) >= 1
        assert (out["boxes"][:, :2] >= 0).all() and (out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all()
        assert (out["boxes"][:, 2:] > out["boxes"][:, :2]).all()
        images, boxes = BatchRandomResize([64, 96])([out["image"]], [out["boxes"]], rng)
        resized = images[0].permute(1, 2, 0).numpy()
        for box, label in zip(boxes[0], out["labels"]):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            assert np.abs(resized[cy, cx].astype(int) - palette[label]).max() < 60


def test_crop_happens_for_most_samples():
    cropped = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        sample, _ = painted_sample(rng)
        out = RandomCrop()(sample, rng)
        cropped += out["image"].shape != sample["image"].shape
    assert 15 <= cropped < 30, "all but the no-crop draws (1 in 7) and failed 0.9 thresholds crop"


def test_empty_sample_passes_every_transform():
    rng = np.random.default_rng(0)
    image = np.full((50, 70, 3), 100, np.uint8)
    sample = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    for seed in range(10):
        out = TrainAugment()(dict(sample), np.random.default_rng(seed))
        assert out["boxes"].shape == (0, 4) and out["image"].shape == (50, 70, 3)
    images, boxes = BatchRandomResize([32])([sample["image"]], [sample["boxes"]], rng)
    assert images.shape == (1, 3, 32, 32) and boxes[0].shape == (0, 4)


def test_distort_matches_paddle_sequential_formulas():
    """The composed affine map equals Paddle's four float steps applied one after another."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
    from_yiq = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])
    image = np.random.default_rng(1).integers(0, 256, (16, 24, 3)).astype(np.uint8)
    for seed in range(20):
        out = RandomDistort(prob=0.8)({"image": image}, np.random.default_rng(seed))["image"]
        rng = np.random.default_rng(seed)
        ref = image.astype(np.float64)
        for which in rng.permutation(4):
            if rng.random() >= 0.8:
                continue
            if which == 0:
                ref = ref + rng.uniform(0.5, 1.5)
            elif which == 1:
                ref = ref * rng.uniform(0.5, 1.5)
            elif which == 2:
                delta = rng.uniform(0.5, 1.5)
                ref = ref * delta + (ref @ [0.299, 0.587, 0.114])[:, :, None] * (1 - delta)
            else:
                theta = rng.uniform(-18, 18) * np.pi
                u, w = np.cos(theta), np.sin(theta)
                ref = ref @ (from_yiq @ np.array([[1, 0, 0], [0, u, -w], [0, w, u]]) @ to_yiq).T
        ref = np.clip(np.rint(ref), 0, 255)
        assert np.abs(out.astype(int) - ref).max() <= 1


def test_batch_resize_scales_boxes():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[20, 10, 120, 60]], np.float32)
    images, scaled = BatchRandomResize([50])([image], [boxes], np.random.default_rng(0))
    assert images.shape == (1, 3, 50, 50) and images.dtype == torch.uint8
    np.testing.assert_allclose(scaled[0], [[5, 5, 30, 30]])


def test_eval_resize_scale_maps_back():
    resized, (sx, sy) = eval_resize(np.zeros((100, 200, 3), np.uint8), 64)
    assert resized.shape == (64, 64, 3)
    assert (64 / sx, 64 / sy) == (200, 100)


# ----------------------------------------------------------------------------- loaders and caches


def batches_of(loader) -> list:
    return [(images, [{k: v.clone() for k, v in t.items()} for t in targets]) for images, targets in loader]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b):
        assert torch.equal(images_a, images_b)
        for ta, tb in zip(targets_a, targets_b):
            assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])


def test_train_loader_batches(shapes_train):
    loader = build_train_loader(shapes_train, 4, [64, 96], workers=0, seed=0, epoch=0)
    assert len(loader) == 3
    for images, targets in loader:
        size = images.shape[-1]
        assert images.shape == (4, 3, size, size) and images.dtype == torch.float32 and size in (64, 96)
        for target in targets:
            assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
            assert target["boxes"].shape[0] == target["labels"].shape[0]
            assert ((target["boxes"] >= 0) & (target["boxes"] <= size)).all()


def test_train_loader_deterministic_and_independent_of_workers(shapes_train):
    def run(workers, seed=0, epoch=0):
        return batches_of(build_train_loader(shapes_train, 4, [64, 96], workers=workers, seed=seed, epoch=epoch))

    reference = run(0)
    assert_same_batches(reference, run(0))
    assert_same_batches(reference, run(2))
    assert not torch.equal(reference[0][0], run(0, epoch=1)[0][0])
    assert not torch.equal(reference[0][0], run(0, seed=1)[0][0])


def test_one_loader_serves_every_epoch_with_persistent_workers(shapes_train):
    """set_epoch on one loader gives each epoch's batches exactly as a fresh loader of that epoch,
    in any order of epochs, and the worker process lives on from one epoch to the next."""
    def fresh(epoch):
        return batches_of(build_train_loader(shapes_train, 4, [64, 96], workers=0, seed=0, epoch=epoch))

    loader = build_train_loader(shapes_train, 4, [64, 96], workers=1, seed=0, persistent_workers=True)
    pids = []
    for epoch in (1, 0, 1):
        loader.set_epoch(epoch)
        assert_same_batches(batches_of(loader), fresh(epoch))
        pids.append(tuple(w.pid for w in loader._iterator._workers))  # DataLoader keeps its persistent iterator
    assert pids[0] == pids[1] == pids[2]


def test_eval_loader_shards_are_the_batches_of_one_process(shapes_train):
    whole = list(build_eval_loader(shapes_train, 64, batch_size=5, workers=0, uint8=True))  # 12 images: 5, 5, 2
    shards = [list(build_eval_loader(shapes_train, 64, batch_size=5, workers=0, rank=r, world_size=2, uint8=True))
              for r in range(2)]
    assert [len(s) for s in shards] == [2, 1]
    for b, (images, metas) in enumerate(whole):
        shard_images, shard_metas = shards[b % 2][b // 2]
        assert images.dtype == torch.uint8 and torch.equal(images, shard_images) and metas == shard_metas
    assert len(list(build_eval_loader(shapes_train, 64, batch_size=5, workers=0, rank=3, world_size=4))) == 0


def test_loaders_leave_the_global_torch_rng_alone(shapes_train):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(build_train_loader(shapes_train, 4, [64], workers=0, seed=0, epoch=0))
    list(build_eval_loader(shapes_train, 64, batch_size=4, workers=0))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_image_in_a_worker_is_still_one_line(tmp_path, workers):
    out = make_shapes_dataset(tmp_path / "s", train=4, val=1, image_size=64)
    broken = out / "images" / "train_000002.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    ds = CocoDetection(out / "annotations" / "instances_train.json", out / "images")
    with pytest.raises(DataError) as err:
        list(build_train_loader(ds, 2, [64], workers=workers, seed=0, epoch=0))
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("cannot decode image file") and "train_000002.jpg" in str(err.value)


def test_rank_sharding_like_distributed_sampler():
    kwargs = dict(seed=5, epoch=2, world_size=3, drop_last=False)
    shards = [[i for batch in EpochBatchSampler(10, 2, rank=r, **kwargs) for i, *_ in batch] for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    interleaved = [shards[r][k] for k in range(4) for r in range(3)]
    assert sorted(interleaved[:10]) == list(range(10)), "one shared permutation, split across ranks"
    assert interleaved[10:] == interleaved[:2], "padded by wrapping around"
    assert len(EpochBatchSampler(10, 2, rank=0, seed=5, epoch=2, world_size=3, drop_last=True)) == 2


def test_too_small_training_set(shapes_train):
    with pytest.raises(DataError, match="instances_train.json has 12 images"):
        build_train_loader(shapes_train, 16, [64], workers=0, seed=0, epoch=0)


def test_eval_loader_and_caches_agree(shapes_dir):
    val = CocoDetection(shapes_dir / "annotations" / "instances_val.json", shapes_dir / "images")
    loader_batches = list(build_eval_loader(val, 64, batch_size=3, workers=0))
    images = torch.cat([b for b, _ in loader_batches])
    metas = [m for _, batch_metas in loader_batches for m in batch_metas]
    assert images.shape == (4, 3, 64, 64)
    assert [m["image_id"] for m in metas] == val.image_ids
    assert metas[0]["orig_size"] == (96, 96) and metas[0]["scale_factor"] == (64 / 96, 64 / 96)

    cache = EvalCache(val, 64)
    assert cache.images.dtype == torch.uint8 and cache.image_ids == val.image_ids
    cached = torch.cat([b for b, _ in cache.batches(3)])
    torch.testing.assert_close(cached, images)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(cached[0], (cache.images[0].float() / 255 - mean) / std)

    subset = EvalCache(val, 64, num_images=2, seed=1)
    assert len(subset) == 2 and subset.image_ids == EvalCache(val, 64, num_images=2, seed=1).image_ids


def test_calib_cache_fixed_subset(shapes_train):
    a = CalibCache(shapes_train, 64, num_images=5, seed=0)
    b = CalibCache(shapes_train, 64, num_images=5, seed=0, workers=2)
    assert a.images.shape == (5, 3, 64, 64)
    assert torch.equal(a.images, b.images)
    batches = list(a.batches(2))
    assert [len(x) for x in batches] == [2, 2, 1] and batches[0].dtype == torch.float32


def test_calib_cache_augments_like_training(shapes_train):
    """The default calibration images are the first images of training epoch 0's batches of that
    seed, at one size; augment=False gives whole images with the evaluation preprocessing."""
    n = len(shapes_train)
    assert len(CalibCache(shapes_train, 64, num_images=n + 3, seed=4)) == n  # at most every image once
    cache = CalibCache(shapes_train, 64, num_images=n - 1, seed=4)
    assert cache.images.shape == (n - 1, 3, 64, 64) and cache.images.dtype == torch.uint8
    first = next(iter(build_train_loader(shapes_train, 8, [64], workers=0, seed=4, epoch=0, drop_last=False,
                                         uint8=True)))[0]
    assert torch.equal(cache.images[: len(first)], first)
    plain = CalibCache(shapes_train, 64, num_images=n - 1, seed=4, augment=False)
    assert plain.images.shape == (n - 1, 3, 64, 64) and not torch.equal(plain.images, cache.images)


# ----------------------------------------------------------------------------- shapes generator


def test_shapes_deterministic_byte_identical(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", train=4, val=2, image_size=64, seed=7)
    b = make_shapes_dataset(tmp_path / "b", train=4, val=2, image_size=64, seed=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 4 + 2 + 3
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = make_shapes_dataset(tmp_path / "c", train=4, val=2, image_size=64, seed=8)
    assert (a / "images" / "train_000000.jpg").read_bytes() != (c / "images" / "train_000000.jpg").read_bytes()


def test_shapes_load_with_pycocotools(shapes_dir, shapes_train):
    paths = resolve_data(shapes_dir)
    val = CocoDetection(paths.val_ann, paths.val_images)
    val.check_images()
    assert shapes_train.label_to_cat_id == [cat_id for cat_id, _ in CATEGORIES]
    assert shapes_train.num_classes >= 5
    assert "shapes" in shapes_train.coco.dataset["info"]["description"]
    assert set(shapes_train.image_ids).isdisjoint(val.image_ids)
    boxes = np.concatenate([shapes_train[i]["boxes"] for i in range(len(shapes_train))])
    assert len(boxes) >= 12 and (boxes[:, 2:] > boxes[:, :2]).all() and (boxes <= 96).all()


def test_shapes_sizes_span_all_strides(tmp_path):
    out = make_shapes_dataset(tmp_path / "s", train=40, val=1, image_size=320, seed=0)
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    sides = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"]])
    # stride-8 objects (under 4 strides across) and stride-64 ones (over 2 strides across)
    assert sides.min() < 32 and sides.max() > 128
    assert len({a["category_id"] for a in data["annotations"]}) == len(CATEGORIES)


def test_shapes_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="taken"):
        make_shapes_dataset(out, train=1, val=1, image_size=64)
    assert (out / "keep.txt").exists()
    make_shapes_dataset(out, train=1, val=1, image_size=64, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "annotations" / "instances_val.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"], "no temporary folders left behind"


# ----------------------------------------------------------------------------- real data


def test_bccd_loads():
    if not (BCCD / "annotations" / "instances_train.json").is_file():
        pytest.skip(f"BCCD dataset not found at {BCCD} (see design.md, section Data)")
    paths = resolve_data(BCCD)
    train = CocoDetection(paths.train_ann, paths.train_images)
    val = CocoDetection(paths.val_ann, paths.val_images)
    assert (len(train), len(val)) == (292, 72)
    assert train.class_names == ["RBC", "WBC", "Platelets"]
    val.check_images()
    sample = val[0]
    assert sample["image"].shape == (480, 640, 3) and len(sample["boxes"]) > 0
