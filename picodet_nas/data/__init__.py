"""Data: COCO-format datasets, PicoDet's augmentation, loaders, decode-once caches, the shapes generator."""

from picodet_nas.data.cache import CalibCache, EvalCache
from picodet_nas.data.coco import CocoDetection
from picodet_nas.data.layout import DataPaths, resolve_data
from picodet_nas.data.loader import build_eval_loader, build_train_loader
from picodet_nas.data.shapes import make_shapes_dataset
from picodet_nas.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize, normalize

__all__ = [
    "CalibCache",
    "CocoDetection",
    "DataPaths",
    "EvalCache",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_eval_loader",
    "build_train_loader",
    "eval_resize",
    "make_shapes_dataset",
    "normalize",
    "resolve_data",
]
