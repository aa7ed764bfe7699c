"""Your own images: a generic folder layout (one category per folder).

Layout::

    <root>/train/*.jpg                      normal images (or in train/good/, sub-folders ok)
    <root>/test/good/*.jpg                  normal test images
    <root>/test/<defect_type>/*.jpg         anomalous test images, one folder per defect type
    masks (optional), found for test/<defect>/<name>.jpg as the first of:
    <root>/ground_truth/<defect>/<name>_mask.png  or  .../<name>.png   (MVTec naming)
    <root>/masks/<defect>/<name>.png              (same file name, any image extension)
    <root>/test/<defect>/<name>_mask.png          (next to the image)
    <root>/ground_truth/<name>.png, <root>/masks/<name>.png   (flat: names must be unique)

The category is the root folder's name (or ``category=``). A root whose sub-folders each
look like the above is read as several categories. Without any mask folder the test set
gives image-level results only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetError, DatasetNotFoundError, is_image_file, list_images
from minimaxad.data.layout import MaskFinder, Problems, discover_categories, select_categories

__all__ = ["list_records", "list_categories"]

EXPECTED = (
    "<root>/train/*.jpg (normal images, or train/good/), <root>/test/good/*.jpg and "
    "<root>/test/<defect_type>/*.jpg, optional masks in <root>/ground_truth/<defect_type>/ or "
    "<root>/masks/<defect_type>/"
)


def _category_dirs(root: Path, category: Optional[str]) -> dict[str, Path]:
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"folder: dataset root {root} {kind}; expected {EXPECTED}")
    if (root / "train").is_dir() or (root / "test").is_dir():
        return {category or root.resolve().name: root}
    if category is not None:
        raise DatasetError(
            f"folder: category={category!r} names a single-category root, but {root} has no train/ or test/ folder"
        )
    return {c: root / c for c in discover_categories(root)}


def list_categories(root: Path, category: Optional[str] = None) -> list[str]:
    """Category names: the root's name (or ``category``) for one category, else its category sub-folders."""
    return sorted(_category_dirs(root, category))


def _is_mask_name(p: Path) -> bool:
    return p.stem.lower().endswith("_mask")


def _train_records(cat_dir: Path, cat: str) -> list[Record]:
    train = cat_dir / "train"
    if not train.is_dir():
        raise DatasetNotFoundError(f"folder '{cat}': training folder {train} does not exist; expected {EXPECTED}")
    others = [d.name for d in train.iterdir() if d.is_dir() and d.name != "good" and not d.name.startswith(".")]
    if others:
        raise DatasetError(
            f"folder '{cat}': {train} has sub-folder(s) {sorted(others)}; training images must all be "
            "normal, directly in train/ or in train/good/. Put defective images in test/<defect_type>/."
        )
    images = list_images(train)
    if (train / "good").is_dir():
        good = list_images(train / "good", recursive=True)
        clash = sorted({p.name for p in images} & {p.name for p in good})
        if clash:
            raise DatasetError(
                f"folder '{cat}': duplicate file name(s) {clash[:5]} in both {train} and {train / 'good'}; "
                "keep each training image once"
            )
        images += good
    if not images:
        raise DatasetError(
            f"folder '{cat}': empty training set: no images (*.png, *.jpg, ...) in {train} or "
            f"{train / 'good'}; expected the normal training images there"
        )
    return [Record(str(p), 0, cat, "good") for p in images]


def _test_records(cat_dir: Path, cat: str, problems: Problems) -> list[Record]:
    test = cat_dir / "test"
    if not test.is_dir():
        raise DatasetNotFoundError(f"folder '{cat}': test folder {test} does not exist; expected {EXPECTED}")
    loose = [p.name for p in test.iterdir() if p.is_file() and is_image_file(p.name)]
    if loose:
        raise DatasetError(
            f"folder '{cat}': {len(loose)} image(s) directly in {test} (e.g. {loose[0]}); put normal "
            "test images in test/good/ and defective ones in test/<defect_type>/"
        )
    defect_dirs = sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not defect_dirs:
        raise DatasetError(f"folder '{cat}': {test} has no sub-folders; expected test/good and test/<defect_type>")
    gt, masks = cat_dir / "ground_truth", cat_dir / "masks"
    per_defect = {d: [p for p in list_images(d) if not _is_mask_name(p)] for d in defect_dirs}
    sibling_masks = any(_is_mask_name(p) for d in defect_dirs if d.name != "good" for p in list_images(d))
    has_masks = gt.is_dir() or masks.is_dir() or sibling_masks
    # Flat mask folders match by file name only: a name used in two defect folders is ambiguous.
    owners: dict[str, list[Path]] = {}
    for d, images in per_defect.items():
        if d.name != "good":
            for p in images:
                owners.setdefault(p.stem, []).append(p)
    finder = MaskFinder()
    records: list[Record] = []
    for d, images in per_defect.items():
        for p in images:
            if d.name == "good":
                records.append(Record(str(p), 0, cat, "good"))
                continue
            mask = finder.find([gt / d.name, masks / d.name], p.stem) if has_masks else None
            if mask is None and sibling_masks:
                mask = finder.find([d], f"{p.stem}_mask")
            if mask is None and has_masks:
                mask = finder.find([gt, masks], p.stem)
                if mask is not None and len(owners[p.stem]) > 1:
                    raise DatasetError(
                        f"folder '{cat}': duplicate file name '{p.stem}' in "
                        f"{', '.join(str(o.parent) for o in owners[p.stem])}; masks in the flat folder "
                        f"{mask.parent} are matched by name, so {mask.name} is ambiguous. Rename the "
                        "images, or put masks in <mask folder>/<defect_type>/."
                    )
            if mask is None and has_masks:
                problems.missing_mask(p, [gt / d.name / f"{p.stem}_mask.png", masks / d.name / f"{p.stem}.png"])
            records.append(Record(str(p), 1, cat, d.name, None if mask is None else str(mask)))
    if not records:
        raise DatasetError(f"folder '{cat}': empty test set: no images in the sub-folders of {test}")
    return records


def list_records(
    root: Path,
    split: str,
    categories: Optional[Iterable[str]] = None,
    category: Optional[str] = None,
    allow_missing_masks: bool = False,
) -> list[Record]:
    """Records of a folder of your own images (see module docstring)."""
    dirs = _category_dirs(root, category)
    selected = select_categories(sorted(dirs), categories, "folder", Path(root), EXPECTED)
    problems = Problems("folder")
    records: list[Record] = []
    for cat in selected:
        if split == "train":
            records.extend(_train_records(dirs[cat], cat))
        else:
            records.extend(_test_records(dirs[cat], cat, problems))
    problems.raise_or_warn(allow_missing_masks)
    return records
