"""AeBAD-S (aero-engine blades), one category with four test domains.

Layout (``root`` is ``AeBAD_S`` or its parent ``AeBAD``)::

    <root>/train/good/<sub-folder>/*.png                 (every sub-folder is used)
    <root>/test/<good | ablation | breakdown | fracture | groove>/<domain>/*.png
    <root>/ground_truth/<defect>/<domain>/<same file name>.png

``domain``: 'same', 'background', 'illumination' or 'view' for one test domain (the
paper reports each, and their mean); None reads all four (each record keeps its domain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetError, DatasetNotFoundError, list_images
from minimaxad.data.layout import MaskFinder, Problems, require_dir

__all__ = ["CATEGORY", "DOMAINS", "list_records", "list_categories", "resolve_root"]

CATEGORY = "AeBAD_S"
DOMAINS = ("same", "background", "illumination", "view")
EXPECTED = (
    "<root>/train/good/<sub-folder>/*.png, <root>/test/<good|defect>/<domain>/*.png and "
    "<root>/ground_truth/<defect>/<domain>/<name>.png (root = the AeBAD_S folder)"
)


def resolve_root(root: Path) -> Path:
    """The ``AeBAD_S`` folder: ``root`` itself or its ``AeBAD_S`` sub-folder; it must hold ``train/`` or ``test/``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"aebad: dataset root {root} {kind}; expected {EXPECTED}")
    if (root / CATEGORY).is_dir():
        root = root / CATEGORY
    if not ((root / "train").is_dir() or (root / "test").is_dir()):
        raise DatasetNotFoundError(f"aebad: {root} has neither train/ nor test/; expected {EXPECTED}")
    return root


def list_categories(root: Path) -> list[str]:
    """``["AeBAD_S"]``, the one category, once ``root`` is checked to hold the dataset."""
    resolve_root(root)
    return [CATEGORY]


def list_records(
    root: Path,
    split: str,
    categories: Optional[Iterable[str]] = None,
    domain: Optional[str] = None,
    allow_missing_masks: bool = False,
) -> list[Record]:
    """AeBAD-S records; ``domain`` selects one test domain (see module docstring)."""
    root = resolve_root(root)
    if categories is not None:
        cats = [categories] if isinstance(categories, str) else list(categories)
        if cats != [CATEGORY]:
            raise DatasetNotFoundError(f"aebad: categories {cats}; AeBAD-S has one category, {CATEGORY!r}")
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"aebad: domain={domain!r}; expected one of {', '.join(DOMAINS)} (or None for all)")

    if split == "train":
        good = require_dir(root / "train" / "good", "aebad: training folder", "train/good/<sub-folder>/*.png")
        images = list_images(good, recursive=True)  # the training set spans all sub-folders
        if not images:
            raise DatasetError(f"aebad: empty training set: no images under {good}")
        return [Record(str(p), 0, CATEGORY, "good") for p in images]

    test = require_dir(root / "test", "aebad: test folder", "test/<good|defect>/<domain>/*.png")
    gt = root / "ground_truth"
    defects = sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
    domains = [domain] if domain else [dm for dm in DOMAINS if any((d / dm).is_dir() for d in defects)]
    if not domains:
        raise DatasetError(f"aebad: no domain folders ({', '.join(DOMAINS)}) inside the defect folders of {test}")
    finder, problems = MaskFinder(), Problems("aebad")
    records: list[Record] = []
    for d in defects:
        for dm in domains:
            folder = d / dm
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"aebad: test folder {folder} does not exist; expected a {dm!r} folder in every "
                    f"defect folder of {test}"
                )
            for p in list_images(folder):
                if d.name == "good":
                    records.append(Record(str(p), 0, CATEGORY, "good", domain=dm))
                    continue
                mask = finder.find([gt / d.name / dm], p.stem)
                if mask is None:
                    problems.missing_mask(p, [gt / d.name / dm / p.name])
                records.append(Record(str(p), 1, CATEGORY, d.name, None if mask is None else str(mask), domain=dm))
    problems.raise_or_warn(allow_missing_masks)
    if not records:
        raise DatasetError(f"aebad: empty test set for domain(s) {domains} in {test}")
    return records
