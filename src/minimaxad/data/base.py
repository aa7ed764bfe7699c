"""The common torch ``Dataset`` over a list of :class:`Record` s, and the unified helpers.

Every reader (``mvtec.py``, ``visa.py``...) only lists files into records; decoding,
validation, caching, transforms and bookkeeping live here, so all formats behave alike.

Item of ``ds[i]`` (a dict)::

    image        (3, h, w) float32, ImageNet-normalised
    mask         (1, h, w) float32 in {0, 1}; zeros for normal items and missing masks
    label        int, 0 normal / 1 anomalous
    category     str
    path         str, the image file
    defect_type  str, "good" for normal items
    has_mask     bool, False only for an anomalous item without a mask file: pixel metrics
                 are meaningful for a category only where every anomalous item has one
"""

from __future__ import annotations

import bisect
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from minimaxad.data.io import (
    BadImageError,
    BadMaskError,
    DatasetError,
    check_mask_size,
    load_image_and_orientation,
    load_mask,
    mask_to_photo_grid,
    probe_image,
)
from minimaxad.data.transforms import MASK_RULES, RandomResizedCropFlip, Size, Transform, relabel_cropped_mask

__all__ = [
    "Record",
    "DataWarning",
    "AnomalyDataset",
    "UnifiedDataset",
    "split_holdout",
    "calibration_subset",
    "validate_records",
]


class DataWarning(UserWarning):
    """Warnings of the data layer (skipped files, missing masks accepted on request)."""


@dataclass(frozen=True)
class Record:
    """One image of a dataset: where it is and what it is, nothing decoded."""

    path: str
    label: int  # 0 normal, 1 anomalous
    category: str
    defect_type: str = "good"
    mask_path: Optional[str] = None
    mask_mode: str = "auto"  # 'nonzero' for label masks (raw VisA)
    domain: Optional[str] = None  # AeBAD-S test domain

    @property
    def has_mask(self) -> bool:
        """The item's true mask is known: normal items (all zeros) or a mask file exists."""
        return self.label == 0 or self.mask_path is not None


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------- validation


def _check_record(rec: Record, full: bool) -> Optional[str]:
    """None if the record's files pass the check, else a one-line problem naming the file."""
    try:
        info = probe_image(rec.path, full=full)
    except DatasetError as exc:
        return f"unreadable image {exc}"
    if rec.mask_path is None:
        return None
    try:
        mask = load_mask(rec.mask_path, mode=rec.mask_mode)  # masks are small: always decode
        check_mask_size((mask.shape[1], mask.shape[0]), info.size, rec.mask_path, info.orientation)
    except DatasetError as exc:
        return f"bad mask of {rec.path}: {exc}"
    return None


def validate_records(
    records: Sequence[Record], level: Union[bool, str] = True, num_threads: Optional[int] = None
) -> list[tuple[int, str]]:
    """Check every file of ``records``; returns (index, problem) pairs, empty when all pass.

    ``level``: True / 'quick' reads headers and file ends (truncation), decodes masks and
    any file that looks truncated; 'full' decodes every image; False checks nothing.
    """
    if level is False or level is None:
        return []
    if level not in (True, "quick", "full"):
        raise ValueError(f"validate={level!r}; expected True, 'quick', 'full' or False")
    full = level == "full"
    threads = num_threads or _default_threads()
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL in decode
        results = list(pool.map(lambda r: _check_record(r, full), records, chunksize=16))
    return [(i, p) for i, p in enumerate(results) if p is not None]


def _report_problems(problems: list[tuple[int, str]], total: int, name: str, skip: bool) -> None:
    """Raise (or, with ``skip``, warn) about files that cannot be used."""
    if not problems:
        return
    lines = "\n  ".join(p for _, p in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    if skip:
        for _, problem in problems:  # every file in the run's log (the warning shows the first 10)
            logging.getLogger("minimaxad").info("%s: skipped %s", name, problem)
        warnings.warn(
            f"{name}: skipped {len(problems)} of {total} images that cannot be read "
            f"(skip_bad_images=True):\n  {lines}{more}",
            DataWarning,
            stacklevel=3,
        )
        return
    cls = BadImageError if any(p.startswith("unreadable image") for _, p in problems) else BadMaskError
    raise cls(
        f"{name}: {len(problems)} of {total} files cannot be used:\n  {lines}{more}\n"
        "Replace or remove these files, or pass skip_bad_images=True to leave the images "
        "out with a warning. (Nothing on disk was changed.)"
    )


# --------------------------------------------------------------------------- views


class _RecordViews:
    """Cheap metadata over ``self.records``: nothing here decodes an image."""

    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def categories(self) -> list[str]:
        """Sorted category names present."""
        return sorted({r.category for r in self.records})

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64, 0 normal / 1 anomalous."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def item_categories(self) -> list[str]:
        """Category of each item, in item order."""
        return [r.category for r in self.records]

    @property
    def defect_types(self) -> list[str]:
        return [r.defect_type for r in self.records]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    @property
    def has_masks(self) -> np.ndarray:
        """(N,) bool: see :attr:`Record.has_mask`."""
        return np.array([r.has_mask for r in self.records], dtype=bool)

    @property
    def category_has_masks(self) -> dict[str, bool]:
        """Per category: True when it has anomalous items and all have masks (pixel
        metrics meaningful), False otherwise (image-level metrics only)."""
        out: dict[str, bool] = {}
        for r in self.records:
            if r.label == 1:
                out[r.category] = out.get(r.category, True) and r.mask_path is not None
        return {c: out.get(c, False) for c in self.categories}

    def indices_of(self, category: str) -> np.ndarray:
        """Item indices of one category."""
        return np.array([i for i, r in enumerate(self.records) if r.category == category], dtype=np.int64)

    def summary(self) -> str:
        """A small table: per category normal / anomalous / with mask counts."""
        rows = ["category                 normal  anomalous  masks"]
        for c in self.categories:
            rs = [r for r in self.records if r.category == c]
            n0 = sum(r.label == 0 for r in rs)
            n1 = len(rs) - n0
            nm = sum(r.label == 1 and r.mask_path is not None for r in rs)
            rows.append(f"{c:<24} {n0:>6}  {n1:>9}  {nm:>5}")
        return "\n".join(rows)


# --------------------------------------------------------------------------- dataset


class AnomalyDataset(_RecordViews, Dataset):
    """Torch dataset over records, with the authors' transforms and an optional cache.

    Args:
        records: the items (see :class:`Record`); usually from :func:`build_dataset`.
        split: 'train' or 'test' (skip_bad_images may replace unreadable training items
            at load time, never test items).
        image_size: resize to (size, size) (or (h, w)), PIL bilinear.
        crop_size: optional center crop after the resize (AeBAD-S: 256 -> 224).
        augment: False, True (AeBAD-S RandomResizedCrop(crop or image size, scale 0.7-1,
            bicubic) + horizontal flip) or a :class:`RandomResizedCropFlip`.
        cache: decode + resize every image now, keep uint8 arrays in memory (shared with
            fork-started DataLoader workers); also a full validation.
        skip_bad_images: leave unreadable files out with a warning instead of raising.
        validate: True (quick check of every file), 'full' (decode all) or False.
        num_threads: threads for validation and cache filling (default: CPU count, max 8).
        name: used in messages, e.g. "mvtec test".
        mask_rule: how test masks become ground truth: 'binarise' (resized mask > 0.5, the
            common path) or the AeBAD-S dataset's rule, 'relabel-max' / 'relabel-half' (an
            anomalous item whose cropped mask is empty is relabelled normal; see
            :func:`~minimaxad.data.transforms.relabel_cropped_mask`).
        white_level: photos of more than 8 bits a channel are read with this value as white
            (see :func:`~minimaxad.data.io.measure_white_level`); None: their type's full range.
    """

    def __init__(
        self,
        records: Sequence[Record],
        split: str = "test",
        image_size: Size = 256,
        crop_size: Optional[Size] = None,
        augment: Union[bool, RandomResizedCropFlip] = False,
        cache: bool = False,
        skip_bad_images: bool = False,
        validate: Union[bool, str] = True,
        num_threads: Optional[int] = None,
        name: str = "dataset",
        mask_rule: str = "binarise",
        white_level: Optional[float] = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; expected 'train' or 'test'")
        if mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule={mask_rule!r}; expected one of {', '.join(MASK_RULES)}")
        self.mask_rule = mask_rule
        self.white_level = white_level
        self.split = split
        self.name = name
        self.transform = Transform(image_size, crop_size)
        if augment is True:
            augment = RandomResizedCropFlip(self.transform.output_size)
        self.augment: Optional[RandomResizedCropFlip] = augment or None
        self.skip_bad_images = skip_bad_images
        self.num_threads = num_threads
        self.records = list(records)
        self._images: Optional[np.ndarray] = None  # (M, H, W, 3) uint8 cache
        self._masks: Optional[np.ndarray] = None  # (K, H, W) uint8 cache
        self._rows: Optional[np.ndarray] = None  # item -> row of _images
        self._mask_rows: Optional[np.ndarray] = None  # item -> row of _masks or -1

        problems = validate_records(self.records, validate, num_threads)
        _report_problems(problems, len(self.records), name, skip_bad_images)
        if problems:
            bad = {i for i, _ in problems}
            before = self.categories
            self.records = [r for i, r in enumerate(self.records) if i not in bad]
            self._check_not_empty(before)
        elif not self.records:
            raise DatasetError(f"{name}: no images")
        if cache:
            self.preload(num_threads)

    def __repr__(self) -> str:
        cached = "cached" if self.is_cached else "not cached"
        return (
            f"AnomalyDataset({self.name!r}, {len(self)} items, {len(self.categories)} categories, "
            f"{self.transform}, augment={self.augment}, {cached})"
        )

    def _check_not_empty(self, categories: Sequence[str]) -> None:
        """After skipping files, every category must keep at least one image."""
        emptied = sorted(set(categories) - set(self.categories))
        if emptied:
            raise DatasetError(
                f"{self.name}: no usable images left in category {', '.join(emptied)} after "
                "skipping unreadable ones; fix or replace those files"
            )

    # -- loading
    def _decode(self, index: int) -> tuple[Image.Image, Optional[np.ndarray]]:
        rec = self.records[index]
        image, orientation = load_image_and_orientation(rec.path, self.white_level)
        mask = load_mask(rec.mask_path, mode=rec.mask_mode) if rec.mask_path else None
        if mask is not None and orientation != 1:  # the mask onto the upright photo's pixels
            mask = mask_to_photo_grid(mask, image.size, orientation)
        return image, mask

    def decode(self, index: int) -> tuple[Image.Image, Optional[np.ndarray]]:
        """Item ``index`` as stored: the RGB photo (EXIF-upright, own size) and its (H, W) uint8
        mask or None; no resize (what tiling cuts: see :mod:`minimaxad.data.tiles`)."""
        return self._decode(index)

    def _resized(self, index: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask or None, at image_size."""
        if self._rows is not None:
            mrow = int(self._mask_rows[index])
            return self._images[self._rows[index]], (self._masks[mrow] if mrow >= 0 else None)
        image, mask = self._decode(index)
        return (self.transform.resize_image(image), None if mask is None else self.transform.resize_mask(mask))

    def _augmented(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows is not None:  # crop the cached image: an approximation, see docs
            image_arr, mask_arr = self._resized(index)
            image = Image.fromarray(image_arr)
            mask = None if mask_arr is None else Image.fromarray(mask_arr, "L")
        else:  # like the authors: crop the decoded image at its own resolution
            image, mask_arr = self._decode(index)
            mask = None
            if mask_arr is not None:
                mask = Image.fromarray(mask_arr, "L")
                if mask.size != image.size:
                    mask = mask.resize(image.size, Image.BILINEAR)
        image, mask = self.augment(image.convert("RGB"), mask)
        # The crop already gave the final size: normalise without a center crop.
        return self.transform.finish(np.asarray(image), None if mask is None else np.asarray(mask), crop=False)

    def _item(self, index: int) -> dict:
        rec = self.records[index]
        label = int(rec.label)
        if self.augment is not None:
            image, mask = self._augmented(index)
        elif self.mask_rule != "binarise" and rec.mask_path is not None:
            image_arr, mask_arr = self._resized(index)
            image, _ = self.transform.finish(image_arr, None)
            mask, relabelled = relabel_cropped_mask(self.transform.center_crop(mask_arr), self.mask_rule)
            if relabelled:
                label = 0  # the crop removed the whole defect: the authors count the image as normal
        else:
            image, mask = self.transform.finish(*self._resized(index))
        return {
            "image": image,
            "mask": mask,
            "label": label,
            "category": rec.category,
            "path": rec.path,
            "defect_type": rec.defect_type,
            "has_mask": rec.has_mask,
        }

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        try:
            return self._item(index)
        except (BadImageError, BadMaskError) as exc:
            # Only training items may be replaced: a test set must stay the test set.
            if not (self.skip_bad_images and self.split == "train") or len(self) < 2:
                raise
            warnings.warn(f"{self.name}: {exc}; using another training image instead", DataWarning)
            return self[(index + 1) % len(self)]

    # -- cache
    @property
    def is_cached(self) -> bool:
        """True once :meth:`preload` has filled the in-memory cache."""
        return self._rows is not None

    def cache_nbytes(self) -> int:
        """Bytes the cache takes (or would take) for the current items."""
        h, w = self.transform.image_size
        n_masks = sum(r.mask_path is not None for r in self.records)
        return len(self.records) * h * w * 3 + n_masks * h * w

    def preload(self, num_threads: Optional[int] = None, progress: bool = False) -> "AnomalyDataset":
        """Decode and resize every image into the in-memory uint8 cache (threads).

        Call before creating DataLoader workers: fork-started workers then share the
        arrays without copying. Unreadable files raise (or are dropped with a warning
        under ``skip_bad_images``). Returns ``self``.
        """
        if self.is_cached:
            return self
        need = self.cache_nbytes()
        avail = _available_memory()
        if avail is not None and need > 0.8 * avail:
            raise MemoryError(
                f"{self.name}: the image cache needs {need / 2**30:.1f} GiB but only "
                f"{avail / 2**30:.1f} GiB of memory is available; use cache=False (with "
                "DataLoader workers), a smaller image_size, or fewer categories"
            )
        h, w = self.transform.image_size
        n = len(self.records)
        mask_rows = np.full(n, -1, dtype=np.int64)
        with_mask = [i for i, r in enumerate(self.records) if r.mask_path is not None]
        mask_rows[with_mask] = np.arange(len(with_mask))
        images = np.empty((n, h, w, 3), dtype=np.uint8)
        masks = np.empty((len(with_mask), h, w), dtype=np.uint8)

        def fill(i: int) -> Optional[str]:
            try:
                image, mask = self._decode(i)
                images[i] = self.transform.resize_image(image)
                if mask is not None:
                    masks[mask_rows[i]] = self.transform.resize_mask(mask)
            except DatasetError as exc:
                return f"unreadable image {exc}" if isinstance(exc, BadImageError) else f"bad mask: {exc}"
            return None

        threads = num_threads or self.num_threads or _default_threads()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = pool.map(fill, range(n), chunksize=4)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=n, desc=f"caching {self.name}", unit="img")
            results = list(results)
        problems = [(i, p) for i, p in enumerate(results) if p is not None]
        _report_problems(problems, n, self.name, self.skip_bad_images)
        if problems:
            keep = np.array([p is None for p in results])
            before = self.categories
            self.records = [r for r, k in zip(self.records, keep) if k]
            images = images[keep]
            kept_masks = mask_rows[keep]
            valid = kept_masks >= 0
            masks = masks[kept_masks[valid]]
            mask_rows = np.full(len(self.records), -1, dtype=np.int64)
            mask_rows[np.flatnonzero(valid)] = np.arange(int(valid.sum()))
            self._check_not_empty(before)
        self._images, self._masks = images, masks
        self._rows, self._mask_rows = np.arange(len(self.records)), mask_rows
        return self

    # -- views
    def subset(self, indices: Iterable[int]) -> "AnomalyDataset":
        """A dataset of the given items, sharing this one's cache (no copy, no re-check)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.records = [self.records[i] for i in idx]
        if self._rows is not None:
            new._rows, new._mask_rows = self._rows[idx], self._mask_rows[idx]
        return new

    def with_augment(self, augment: Union[bool, RandomResizedCropFlip]) -> "AnomalyDataset":
        """The same items (and cache) with augmentation switched on or off."""
        new = self.subset(range(len(self)))
        if augment is True:
            augment = RandomResizedCropFlip(self.transform.output_size)
        new.augment = augment or None
        return new


def _available_memory() -> Optional[int]:
    """MemAvailable in bytes (Linux), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- unified


class UnifiedDataset(_RecordViews, Dataset):
    """Several datasets as one (the unified / multi-class setting), each item keeping its
    category. Parts may use different transforms (the paper resizes MVTec AD to 224 while
    AeBAD-S is resized to 256 and cropped to 224) as long as the output sizes agree.

    Category names must not collide across parts (results are reported per category).
    """

    def __init__(self, parts: Sequence[Union[AnomalyDataset, "UnifiedDataset"]]) -> None:
        flat: list[AnomalyDataset] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, UnifiedDataset) else [p])
        flat = [p for p in flat if len(p)]
        if not flat:
            raise DatasetError("UnifiedDataset: no parts with items")
        sizes = {p.transform.output_size for p in flat}
        if len(sizes) > 1:
            raise DatasetError(
                f"UnifiedDataset: parts produce different image sizes {sorted(sizes)}; "
                "give every part the same final size (image_size, or crop_size where used)"
            )
        splits = {p.split for p in flat}
        if len(splits) > 1:
            raise DatasetError(f"UnifiedDataset: parts mix splits {sorted(splits)}")
        owner: dict[str, str] = {}
        for p in flat:
            for c in p.categories:
                if c in owner and owner[c] != p.name:
                    raise DatasetError(
                        f"category {c!r} comes from both {owner[c]!r} and {p.name!r}; results "
                        "are reported per category, so names must be unique. Pass "
                        "prefix_categories=True to build_unified (names become 'format/category')."
                    )
                owner[c] = p.name
        seen: dict[str, str] = {}
        for p in flat:
            for r in p.records:
                if r.path in seen:
                    raise DatasetError(
                        f"image {r.path} is listed twice ({seen[r.path]!r} and {p.name!r}); "
                        "a unified dataset must not contain the same file twice"
                    )
                seen[r.path] = p.name
        self.parts = flat
        self.split = flat[0].split
        self.name = " + ".join(p.name for p in flat)
        self._offsets = np.cumsum([0] + [len(p) for p in flat]).tolist()

    @property
    def records(self) -> list[Record]:  # type: ignore[override]
        """Every part's records, in item order (a new list on each call)."""
        return [r for p in self.parts for r in p.records]

    @property
    def transform(self) -> Transform:
        """The first part's transform (all parts share the output size)."""
        return self.parts[0].transform

    def __len__(self) -> int:
        return self._offsets[-1]

    def __repr__(self) -> str:
        return f"UnifiedDataset({len(self)} items, parts={[p.name for p in self.parts]})"

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = bisect.bisect_right(self._offsets, index) - 1
        return self.parts[k][index - self._offsets[k]]

    @property
    def is_cached(self) -> bool:
        """True when every part is cached."""
        return all(p.is_cached for p in self.parts)

    def cache_nbytes(self) -> int:
        """Bytes the cache of every part takes (or would take)."""
        return sum(p.cache_nbytes() for p in self.parts)

    def preload(self, num_threads: Optional[int] = None, progress: bool = False) -> "UnifiedDataset":
        """Cache every part (see :meth:`AnomalyDataset.preload`); parts may lose unreadable images. Returns ``self``."""
        for p in self.parts:
            p.preload(num_threads, progress)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts]).tolist()
        return self

    def subset(self, indices: Iterable[int]) -> "UnifiedDataset":
        """Items by global index, grouped by part (order within a part is kept)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        parts = []
        for k, p in enumerate(self.parts):
            lo, hi = self._offsets[k], self._offsets[k + 1]
            local = idx[(idx >= lo) & (idx < hi)] - lo
            if len(local):
                parts.append(p.subset(local))
        if not parts:
            return _EmptyUnified(self)
        return UnifiedDataset(parts)

    def with_augment(self, augment: Union[bool, RandomResizedCropFlip]) -> "UnifiedDataset":
        """The same items with augmentation switched on or off in every part."""
        return UnifiedDataset([p.with_augment(augment) for p in self.parts])


def _EmptyUnified(template: UnifiedDataset) -> UnifiedDataset:
    """An empty view (held-out set of size 0)."""
    new = object.__new__(UnifiedDataset)
    new.parts = [template.parts[0].subset([])]
    new.split, new.name = template.split, template.name
    new._offsets = [0, 0]
    return new


# --------------------------------------------------------------------------- holdout


def split_holdout(
    dataset: Union[AnomalyDataset, UnifiedDataset], holdout: Union[int, float] = 0.1, seed: int = 0
) -> tuple[Union[AnomalyDataset, UnifiedDataset], Union[AnomalyDataset, UnifiedDataset]]:
    """Split off held-out normal images (e.g. to calibrate thresholds), per category.

    ``holdout``: a float in [0, 1) is the fraction of each category's normal images; an
    int is a count per category. Every category keeps at least one training image.
    Deterministic for ``seed``. Returns ``(train, heldout)`` views sharing the cache.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
        raise ValueError(f"holdout={holdout!r}; expected a fraction in [0, 1) or a count >= 0")
    if isinstance(holdout, (float, np.floating)) and not 0 <= holdout < 1:
        raise ValueError(f"holdout={holdout}; a fraction must be in [0, 1) (or give an int count)")
    if holdout < 0:
        raise ValueError(f"holdout={holdout}; expected >= 0")
    rng = np.random.default_rng(seed)
    records = dataset.records
    held: list[int] = []
    for cat in dataset.categories:
        normal = [i for i, r in enumerate(records) if r.category == cat and r.label == 0]
        if isinstance(holdout, (float, np.floating)):
            k = int(round(holdout * len(normal)))
            if holdout > 0 and len(normal) >= 2:
                k = max(k, 1)
        else:
            k = int(holdout)
        if k > len(normal) - 1:
            raise ValueError(
                f"category {cat!r} has {len(normal)} normal images; cannot hold out {k} "
                "and keep at least one for training"
            )
        held.extend(np.asarray(normal)[rng.permutation(len(normal))[:k]].tolist())
    held_set = set(held)
    train_idx = [i for i in range(len(records)) if i not in held_set]
    return dataset.subset(train_idx), dataset.subset(sorted(held))


def calibration_subset(
    dataset: Union[AnomalyDataset, UnifiedDataset], max_per_category: int, seed: int = 0
) -> Union[AnomalyDataset, UnifiedDataset]:
    """At most ``max_per_category`` normal images of *each* category (a seeded random choice,
    kept in dataset order), so that calibrated thresholds represent every category of a
    unified model, not the first ones in category order. Deterministic for ``seed``."""
    if max_per_category < 1:
        raise ValueError(f"max_per_category={max_per_category}; expected at least 1")
    rng = np.random.default_rng(seed)
    records = dataset.records
    chosen: list[int] = []
    for cat in dataset.categories:
        normal = np.asarray([i for i, r in enumerate(records) if r.category == cat and r.label == 0], dtype=np.int64)
        if len(normal) > max_per_category:
            normal = normal[rng.permutation(len(normal))[:max_per_category]]
        chosen.extend(normal.tolist())
    return dataset.subset(sorted(chosen))


def relabel_categories(records: Sequence[Record], prefix: str) -> list[Record]:
    """Records with categories renamed to ``prefix/category`` (unified across datasets)."""
    return [replace(r, category=f"{prefix}/{r.category}") for r in records]
