"""The data layer: readers for the public benchmarks and your own folders, the authors'
transforms, an in-memory cache, validation that fails early, and a synthetic dataset.

>>> from minimaxad.data import build_dataset
>>> ds = build_dataset("mvtec", root, split="test", categories=["bottle"], image_size=256)
>>> item = ds[0]  # image (3,256,256), mask (1,256,256), label, category, path, defect_type, has_mask

See ``docs/data.md`` for the layouts.
"""

from minimaxad.data.base import (
    AnomalyDataset,
    DataWarning,
    Record,
    UnifiedDataset,
    calibration_subset,
    split_holdout,
    validate_records,
)
from minimaxad.data.build import build_dataset, build_unified, list_categories, list_formats
from minimaxad.data.io import (
    IMAGE_EXTENSIONS,
    BadImageError,
    BadMaskError,
    DatasetError,
    DatasetNotFoundError,
    load_image,
    load_mask,
)
from minimaxad.data.loader import collate, make_loader
from minimaxad.data.synthetic import generate_synthetic_dataset, render_sample
from minimaxad.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomResizedCropFlip, Transform, denormalize

__all__ = [
    "AnomalyDataset",
    "UnifiedDataset",
    "Record",
    "DataWarning",
    "build_dataset",
    "build_unified",
    "list_formats",
    "list_categories",
    "split_holdout",
    "calibration_subset",
    "collate",
    "make_loader",
    "validate_records",
    "generate_synthetic_dataset",
    "render_sample",
    "load_image",
    "load_mask",
    "Transform",
    "RandomResizedCropFlip",
    "denormalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetNotFoundError",
    "BadImageError",
    "BadMaskError",
]
