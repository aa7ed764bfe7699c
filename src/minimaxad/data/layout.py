"""Shared pieces of the folder readers: finding categories, masks and collecting problems.

Readers list files into :class:`~minimaxad.data.base.Record` s and report every layout
problem of a run at once (one error with all missing masks, not one per restart).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

from minimaxad.data.base import DataWarning, Record
from minimaxad.data.io import DatasetError, DatasetNotFoundError, is_image_file, list_images

__all__ = [
    "require_dir",
    "discover_categories",
    "select_categories",
    "MaskFinder",
    "Problems",
    "mvtec_category_records",
]


def require_dir(path: Path, what: str, expected: str) -> Path:
    """``path`` if it is a folder, else :class:`DatasetNotFoundError` saying what was expected."""
    if not path.is_dir():
        kind = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetNotFoundError(f"{what} {path} {kind}; expected {expected}")
    return path


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover_categories(root: Path, markers: Sequence[str] = ("train", "test")) -> list[str]:
    """Category folders of ``root``: sub-folders holding any of ``markers``."""
    return [d.name for d in _subdirs(root) if any((d / m).is_dir() for m in markers)]


def select_categories(
    available: Sequence[str], requested: Optional[Iterable[str]], fmt: str, root: Path, expected: str
) -> list[str]:
    """Validate ``requested`` (None = all) against ``available``; errors list what exists."""
    if not available:
        raise DatasetError(f"{fmt}: no categories found under {root}; expected {expected}")
    if requested is None:
        return list(available)
    if isinstance(requested, str):
        requested = [requested]
    requested = list(dict.fromkeys(requested))
    if not requested:
        raise ValueError(f"{fmt}: categories is an empty list; pass None for all categories")
    missing = [c for c in requested if c not in available]
    if missing:
        raise DatasetNotFoundError(
            f"{fmt}: category {', '.join(map(repr, missing))} not found under {root}; available: {', '.join(available)}"
        )
    return requested


class MaskFinder:
    """Finds the mask of an image by name in candidate folders: ``<stem>_mask.<ext>``
    (MVTec) first, then ``<stem>.<ext>`` (VisA converted, GoodsAD, AeBAD-S). Folder
    listings are read once."""

    def __init__(self) -> None:
        self._listing: dict[Path, dict[str, list[Path]]] = {}

    def _index(self, folder: Path) -> dict[str, list[Path]]:
        if folder not in self._listing:
            index: dict[str, list[Path]] = {}
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and is_image_file(p.name):
                        index.setdefault(p.stem, []).append(p)
            self._listing[folder] = index
        return self._listing[folder]

    def find(self, folders: Sequence[Path], stem: str) -> Optional[Path]:
        """First match over ``folders``; two files with the same stem in one folder
        (``000.png`` and ``000.bmp``) is ambiguous and raises."""
        for folder in folders:
            index = self._index(folder)
            for key in (f"{stem}_mask", stem):
                hits = index.get(key, [])
                if len(hits) > 1:
                    names = ", ".join(sorted(h.name for h in hits))
                    raise DatasetError(
                        f"ambiguous mask for image '{stem}' in {folder}: {names}; keep one file per image"
                    )
                if hits:
                    return hits[0]
        return None


class Problems:
    """Collects layout problems of one reader run, then raises them together."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.missing_masks: list[str] = []

    def missing_mask(self, image: Path, expected: Sequence[Path]) -> None:
        """Note an anomalous ``image`` without a mask, and the first two places looked in."""
        where = " or ".join(str(p) for p in expected[:2])
        self.missing_masks.append(f"{image} (expected {where})")

    def raise_or_warn(self, allow_missing_masks: bool) -> None:
        """Report the missing masks, if any: a ``DataWarning`` under ``allow_missing_masks``, else a
        ``DatasetError`` listing the first ten.
        """
        n = len(self.missing_masks)
        if not n:
            return
        lines = "\n  ".join(self.missing_masks[:10]) + (f"\n  ... and {n - 10} more" if n > 10 else "")
        if allow_missing_masks:
            warnings.warn(
                f"{self.fmt}: {n} anomalous test images have no mask; they get has_mask=False "
                f"(image-level metrics only for their categories):\n  {lines}",
                DataWarning,
                stacklevel=4,
            )
            return
        raise DatasetError(
            f"{self.fmt}: {n} anomalous test images have no mask:\n  {lines}\n"
            "Add the masks (name <image>_mask.png or the image's own name), or pass "
            "allow_missing_masks=True to evaluate those categories at image level only."
        )


def mvtec_category_records(
    cat_dir: Path, category: str, split: str, fmt: str, finder: MaskFinder, problems: Problems, mask_mode: str = "auto"
) -> list[Record]:
    """Records of one MVTec-like category folder::

        <cat_dir>/train/good/*.png
        <cat_dir>/test/<good | defect>/*.png
        <cat_dir>/ground_truth/<defect>/<name>_mask.png   (or <name>.png)

    A category without a ``ground_truth`` folder has no masks (image-level results);
    with one, every anomalous image must have its mask (collected in ``problems``).
    """
    if split == "train":
        good = require_dir(
            cat_dir / "train" / "good", f"{fmt} '{category}': training folder", "normal training images there"
        )
        images = list_images(good)
        if not images:
            raise DatasetError(
                f"{fmt} '{category}': empty training set: no images (*.png, *.jpg, ...) in {good}; "
                "expected the normal training images there"
            )
        return [Record(str(p), 0, category, "good") for p in images]

    test = require_dir(
        cat_dir / "test", f"{fmt} '{category}': test folder", "test/good and test/<defect_type> sub-folders"
    )
    defect_dirs = _subdirs(test)
    if not defect_dirs:
        raise DatasetError(
            f"{fmt} '{category}': {test} has no sub-folders; expected test/good (normal) and "
            "test/<defect_type> (anomalous) folders of images"
        )
    gt_root = cat_dir / "ground_truth"
    has_gt = gt_root.is_dir()
    records: list[Record] = []
    for d in defect_dirs:
        for p in list_images(d):
            if d.name == "good":
                records.append(Record(str(p), 0, category, "good"))
                continue
            mask = finder.find([gt_root / d.name], p.stem) if has_gt else None
            if mask is None and has_gt:
                problems.missing_mask(p, [gt_root / d.name / f"{p.stem}_mask.png", gt_root / d.name / f"{p.stem}.png"])
            records.append(Record(str(p), 1, category, d.name, None if mask is None else str(mask), mask_mode))
    if not records:
        raise DatasetError(f"{fmt} '{category}': empty test set: no images in the sub-folders of {test}")
    return records
