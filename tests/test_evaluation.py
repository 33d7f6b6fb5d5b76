"""COCO evaluation on tiny in-memory datasets with known answers."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from picodet_nas.evaluation import STAT_KEYS, coco_evaluate, detections_to_coco

CAT_IDS = [1, 3, 90]  # non-contiguous, like COCO's


def make_coco(images, annotations):
    """``annotations``: (image_id, category_id, [x, y, w, h])."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 640, "height": 480} for i in images],
        "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS],
        "annotations": [
            {"id": n + 1, "image_id": img, "category_id": cat, "bbox": list(box),
             "area": box[2] * box[3], "iscrowd": 0}
            for n, (img, cat, box) in enumerate(annotations)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# One GT per image, one per size range (small < 32^2 <= medium < 96^2 <= large).
SIZED_GT = [
    (1, 1, [10.0, 10.0, 20.0, 20.0]),
    (2, 3, [50.0, 40.0, 60.0, 50.0]),
    (3, 90, [100.0, 80.0, 200.0, 150.0]),
]


def perfect_detections():
    return [{"image_id": img, "category_id": cat, "bbox": box, "score": 0.9}
            for img, cat, box in SIZED_GT]


def test_perfect_predictions_give_one_everywhere():
    coco = make_coco([1, 2, 3], SIZED_GT)
    stats = coco_evaluate(coco, perfect_detections())
    assert list(stats) == list(STAT_KEYS)
    assert all(isinstance(v, float) for v in stats.values())
    assert stats == pytest.approx({key: 1.0 for key in STAT_KEYS})


def test_no_detections_give_zeros_without_crashing(capsys):
    coco = make_coco([1, 2, 3], SIZED_GT)
    assert coco_evaluate(coco, []) == {key: 0.0 for key in STAT_KEYS}
    assert coco_evaluate(coco, [], image_ids=[1]) == {key: 0.0 for key in STAT_KEYS}
    coco_evaluate(coco, perfect_detections())
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_contiguous_labels_map_to_category_ids():
    coco = make_coco([1, 2, 3], SIZED_GT)
    detections = []
    for img, cat, (x, y, w, h) in SIZED_GT:
        label = CAT_IDS.index(cat)
        detections += detections_to_coco(img, torch.tensor([[x, y, x + w, y + h]]),
                                         torch.tensor([0.8]), torch.tensor([label]), CAT_IDS)
    assert detections[1] == {"image_id": 2, "category_id": 3,
                             "bbox": pytest.approx([50.0, 40.0, 60.0, 50.0]), "score": pytest.approx(0.8)}
    assert coco_evaluate(coco, detections)["mAP"] == pytest.approx(1.0)

    # The classic mistake, labels used as category ids, scores (almost) nothing.
    wrong = [dict(d, category_id=CAT_IDS.index(d["category_id"])) for d in detections]
    assert coco_evaluate(coco, wrong)["mAP"] == pytest.approx(0.0)


def test_detections_to_coco_accepts_mappings_and_arrays():
    dets = detections_to_coco(7, np.array([[1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 1.0, 1.0]]),
                              np.array([0.5, 0.25]), np.array([1, 0]), {0: 1, 1: 90})
    assert dets == [
        {"image_id": 7, "category_id": 90, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5},
        {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.25},
    ]
    assert detections_to_coco(7, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), CAT_IDS) == []


def test_known_partial_case_and_subset():
    # Two images, one medium GT each, same class. The best-scored detection is a miss
    # (no overlap) on image 2, the second a perfect hit on image 1: precision 0 then 1/2
    # at recall 1/2. COCO's 101-point interpolated precision is 1/2 on the 51 recall
    # points 0, 0.01, ..., 0.50 and 0 after, so AP = 0.5 * 51 / 101 at every IoU.
    gt = [(1, 3, [50.0, 40.0, 60.0, 50.0]), (2, 3, [50.0, 40.0, 60.0, 50.0])]
    coco = make_coco([1, 2], gt)
    detections = [
        {"image_id": 1, "category_id": 3, "bbox": [50.0, 40.0, 60.0, 50.0], "score": 0.8},
        {"image_id": 2, "category_id": 3, "bbox": [300.0, 300.0, 50.0, 50.0], "score": 0.9},
    ]
    stats = coco_evaluate(coco, detections)
    assert stats["mAP"] == pytest.approx(0.5 * 51 / 101)
    assert stats["mAP50"] == pytest.approx(0.5 * 51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)
    assert stats["mAP_small"] == 0.0 and stats["mAP_large"] == 0.0  # no GT there: -1 -> 0.0
    assert stats["mAP_medium"] == pytest.approx(stats["mAP"])

    # Image 1 alone is perfect; image 2's miss and its unmatched GT are out of scope.
    subset = coco_evaluate(coco, detections, image_ids=[1])
    assert subset["mAP"] == pytest.approx(1.0)
    assert subset["AR1"] == pytest.approx(1.0)


def test_unknown_image_id_is_a_clear_error():
    coco = make_coco([1, 2, 3], SIZED_GT)
    bad = perfect_detections() + [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.1}]
    with pytest.raises(ValueError, match="42"):
        coco_evaluate(coco, bad)
