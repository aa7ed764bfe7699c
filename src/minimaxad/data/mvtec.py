"""MVTec AD (and every MVTec-like layout: GoodsAD, MAD, converted VisA, magnetic tile...).

Layout::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect_type>/000.png
    <root>/<category>/ground_truth/<defect_type>/000_mask.png   (or 000.png)

``root`` may also be one category folder itself (it then holds ``train/`` and ``test/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetNotFoundError
from minimaxad.data.layout import MaskFinder, Problems, discover_categories, mvtec_category_records, select_categories

__all__ = ["list_records", "list_categories", "mvtec_like_records", "category_dirs"]

EXPECTED = (
    "<root>/<category>/train/good/*.png, <root>/<category>/test/<good|defect>/*.png and "
    "<root>/<category>/ground_truth/<defect>/<name>_mask.png"
)


def category_dirs(root: Path, fmt: str, expected: str = EXPECTED) -> dict[str, Path]:
    """Category name -> folder. ``root`` is a folder of categories or one category."""
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"{fmt}: dataset root {root} {kind}; expected {expected}")
    if (root / "train").is_dir() or (root / "test").is_dir():
        return {root.resolve().name: root}
    return {c: root / c for c in discover_categories(root)}


def list_categories(root: Path) -> list[str]:
    """Category names found under ``root``."""
    return sorted(category_dirs(root, "mvtec"))


def mvtec_like_records(
    root: Path,
    split: str,
    categories: Optional[Iterable[str]],
    fmt: str,
    expected: str = EXPECTED,
    allow_missing_masks: bool = False,
    mask_mode: str = "auto",
) -> list[Record]:
    """Records of the selected categories of an MVTec-like tree (see module docstring)."""
    dirs = category_dirs(root, fmt, expected)
    selected = select_categories(sorted(dirs), categories, fmt, Path(root), expected)
    finder, problems = MaskFinder(), Problems(fmt)
    records: list[Record] = []
    for cat in selected:
        records.extend(mvtec_category_records(dirs[cat], cat, split, fmt, finder, problems, mask_mode))
    problems.raise_or_warn(allow_missing_masks)
    return records


def list_records(
    root: Path, split: str, categories: Optional[Iterable[str]] = None, allow_missing_masks: bool = False
) -> list[Record]:
    """MVTec AD records."""
    return mvtec_like_records(root, split, categories, "mvtec", EXPECTED, allow_missing_masks)
