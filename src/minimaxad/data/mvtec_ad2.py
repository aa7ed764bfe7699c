"""MVTec AD 2 (2025): 8 categories, a validation split of normal photos, a public and two private test sets.

Layout::

    <root>/<category>/train/good/*.png                           normal, for training
    <root>/<category>/validation/good/*.png                      normal, for calibrating thresholds
    <root>/<category>/test_public/good/*.png                     label 0
    <root>/<category>/test_public/bad/*.png                      label 1
    <root>/<category>/test_public/ground_truth/bad/<name>_mask.png   (or <name>.png)
    <root>/<category>/test_private/*.png                         no labels (evaluation server)
    <root>/<category>/test_private_mixed/*.png                   no labels (evaluation server)

``root`` may also be one category folder itself. Splits: ``train`` (train/good), ``validation``
(validation/good) and ``test`` (test_public). The private sets carry no labels, so they are not a
split: :func:`list_private_images` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetError, DatasetNotFoundError, list_images
from minimaxad.data.layout import MaskFinder, Problems, discover_categories, require_dir, select_categories

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "PRIVATE_SETS",
    "VALIDATION_SOURCE",
    "list_records",
    "list_categories",
    "list_private_images",
]

CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
SPLITS = ("train", "validation", "test")
PRIVATE_SETS = ("test_private", "test_private_mixed")
VALIDATION_SOURCE = "validation/good"  # where the validation split's normal photos are (said in logs)
FMT = "mvtec_ad2"
EXPECTED = (
    "<root>/<category>/train/good/*.png, <category>/validation/good/*.png, <category>/test_public/{good,bad}/*.png "
    "and <category>/test_public/ground_truth/bad/<name>_mask.png"
)
_MARKERS = ("train", "validation", "test_public")


def category_dirs(root: Path) -> dict[str, Path]:
    """Category name -> folder. ``root`` is a folder of categories or one category."""
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"{FMT}: dataset root {root} {kind}; expected {EXPECTED}")
    if any((root / m).is_dir() for m in _MARKERS):
        return {root.resolve().name: root}
    return {c: root / c for c in discover_categories(root, _MARKERS)}


def list_categories(root: Path) -> list[str]:
    """Category names found under ``root``."""
    return sorted(category_dirs(root))


def _normal_images(folder: Path, category: str, what: str) -> list[Path]:
    """The images of a folder of normal photos; errors name the folder and what it should hold."""
    require_dir(folder, f"{FMT} '{category}': {what} folder", f"the normal {what} photos there ({EXPECTED})")
    images = list_images(folder)
    if not images:
        raise DatasetError(
            f"{FMT} '{category}': empty {what} set: no images (*.png, ...) in {folder}; "
            f"expected the normal {what} photos there"
        )
    return images


def _test_records(cat_dir: Path, category: str, finder: MaskFinder, problems: Problems) -> list[Record]:
    """test_public: good (label 0) and bad (label 1, mask from ground_truth/bad)."""
    test = require_dir(cat_dir / "test_public", f"{FMT} '{category}': public test folder", "test_public/{good,bad}")
    records: list[Record] = []
    for kind in ("good", "bad"):
        folder = require_dir(
            test / kind, f"{FMT} '{category}': public test folder", f"the {kind} test photos there ({EXPECTED})"
        )
        for p in list_images(folder):
            if kind == "good":
                records.append(Record(str(p), 0, category, "good"))
                continue
            gt = test / "ground_truth" / "bad"
            mask = finder.find([gt], p.stem)
            if mask is None:
                problems.missing_mask(p, [gt / f"{p.stem}_mask.png", gt / f"{p.stem}.png"])
            records.append(Record(str(p), 1, category, "bad", None if mask is None else str(mask)))
    if not records:
        raise DatasetError(f"{FMT} '{category}': empty public test set: no images in {test}/good or {test}/bad")
    return records


def list_records(
    root: Path, split: str, categories: Optional[Iterable[str]] = None, allow_missing_masks: bool = False
) -> list[Record]:
    """MVTec AD 2 records of ``split`` ('train', 'validation' or 'test' = test_public).

    Every anomalous public test photo needs its mask; all missing ones are reported together
    (a ``DataWarning`` instead with ``allow_missing_masks``).
    """
    if split not in SPLITS:
        raise ValueError(f"{FMT}: split={split!r}; expected one of {', '.join(SPLITS)}")
    dirs = category_dirs(root)
    selected = select_categories(sorted(dirs), categories, FMT, Path(root), EXPECTED)
    finder, problems = MaskFinder(), Problems(FMT)
    records: list[Record] = []
    for cat in selected:
        if split == "test":
            records.extend(_test_records(dirs[cat], cat, finder, problems))
        else:
            folder = dirs[cat] / split / "good"
            records.extend(Record(str(p), 0, cat, "good") for p in _normal_images(folder, cat, split))
    problems.raise_or_warn(allow_missing_masks)
    return records


def list_private_images(
    root: Path, test_set: str = "test_private", categories: Optional[Iterable[str]] = None
) -> dict[str, list[Path]]:
    """Category -> the unlabelled photos of a private test set ('test_private' or
    'test_private_mixed'), sorted; these are scored for the evaluation server, never evaluated here."""
    if test_set not in PRIVATE_SETS:
        raise ValueError(f"{FMT}: test_set={test_set!r}; expected one of {', '.join(PRIVATE_SETS)}")
    dirs = category_dirs(root)
    selected = select_categories(sorted(dirs), categories, FMT, Path(root), EXPECTED)
    found: dict[str, list[Path]] = {}
    for cat in selected:
        folder = require_dir(dirs[cat] / test_set, f"{FMT} '{cat}': private test folder", f"{test_set}/*.png")
        images = list_images(folder)
        if not images:
            raise DatasetError(f"{FMT} '{cat}': no images (*.png, ...) in {folder}; expected the {test_set} photos")
        found[cat] = images
    return found
