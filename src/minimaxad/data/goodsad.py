"""GoodsAD (PKU-GoodsAD): MVTec-like, one folder per category.

Layout::

    <root>/{cigarette_box, drink_bottle, drink_can, food_bottle, food_box, food_package}/
        train/good/*.jpg
        test/<good | defect_type>/*.jpg
        ground_truth/<defect_type>/<name>.png   (or <name>_mask.png)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.mvtec import category_dirs, mvtec_like_records

__all__ = ["CATEGORIES", "list_records", "list_categories"]

CATEGORIES = ("cigarette_box", "drink_bottle", "drink_can", "food_bottle", "food_box", "food_package")

EXPECTED = (
    "<root>/<category>/train/good/*.jpg, <root>/<category>/test/<good|defect>/*.jpg and "
    "<root>/<category>/ground_truth/<defect>/<name>.png, categories " + ", ".join(CATEGORIES)
)


def list_categories(root: Path) -> list[str]:
    """Category names found under ``root``."""
    return sorted(category_dirs(root, "goodsad", EXPECTED))


def list_records(
    root: Path, split: str, categories: Optional[Iterable[str]] = None, allow_missing_masks: bool = False
) -> list[Record]:
    """GoodsAD records (the generic MVTec-like reader)."""
    return mvtec_like_records(root, split, categories, "goodsad", EXPECTED, allow_missing_masks)
