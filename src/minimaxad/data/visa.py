"""VisA, as released (split CSV + ``Data/``) or converted to the MVTec-like ``1cls`` layout.

Released layout (``root`` holds ``split_csv/``)::

    <root>/split_csv/1cls.csv            columns object,split,label,image,mask
    <root>/<object>/Data/Images/Normal/0000.JPG
    <root>/<object>/Data/Images/Anomaly/000.JPG
    <root>/<object>/Data/Masks/Anomaly/000.png     (label masks: any nonzero value = defect)

Converted layout (``root`` is ``VisA_pytorch/1cls`` or its parent)::

    <root>/<object>/train/good/*.JPG
    <root>/<object>/test/{good,bad}/*.JPG
    <root>/<object>/ground_truth/bad/<name>.png
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetError, DatasetNotFoundError
from minimaxad.data.layout import Problems, select_categories
from minimaxad.data.mvtec import mvtec_like_records

__all__ = ["CATEGORIES", "list_records", "list_categories", "is_released_layout"]

CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
EXPECTED = (
    "either the released layout (<root>/split_csv/1cls.csv and <root>/<object>/Data/Images/...) "
    "or the converted 1cls layout (<root>/<object>/train/good, test/{good,bad}, ground_truth/bad)"
)
_COLUMNS = ("object", "split", "label", "image", "mask")


def is_released_layout(root: Path, split_file: str = "1cls.csv") -> bool:
    """True when ``root`` is the released layout (``split_csv/<split_file>``), not the converted one."""
    return (Path(root) / "split_csv" / split_file).is_file()


def _converted_root(root: Path) -> Path:
    for sub in ("1cls", "VisA_pytorch/1cls"):
        if (root / sub).is_dir():
            return root / sub
    return root


def _read_split(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in _COLUMNS if c not in fields]
        if missing:
            raise DatasetError(
                f"visa: split file {csv_path} lacks column(s) {missing}; found {fields}, expected {','.join(_COLUMNS)}"
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def list_categories(root: Path, split_file: str = "1cls.csv") -> list[str]:
    """Category names: the split file's objects (released layout), else the category folders."""
    root = Path(root).expanduser()
    if is_released_layout(root, split_file):
        return sorted({r["object"] for r in _read_split(root / "split_csv" / split_file)})
    from minimaxad.data.mvtec import category_dirs

    return sorted(category_dirs(_converted_root(root), "visa", EXPECTED))


def list_records(
    root: Path,
    split: str,
    categories: Optional[Iterable[str]] = None,
    split_file: str = "1cls.csv",
    allow_missing_masks: bool = False,
) -> list[Record]:
    """VisA records from either layout (detected from ``root``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"visa: dataset root {root} {kind}; expected {EXPECTED}")
    if not is_released_layout(root, split_file):
        if (root / "split_csv").is_dir():
            raise DatasetNotFoundError(
                f"visa: split file {root / 'split_csv' / split_file} not found; pass split_file= "
                "the CSV to use (columns object,split,label,image,mask)"
            )
        return mvtec_like_records(_converted_root(root), split, categories, "visa", EXPECTED, allow_missing_masks)

    csv_path = root / "split_csv" / split_file
    rows = _read_split(csv_path)
    available = sorted({r["object"] for r in rows})
    selected = set(select_categories(available, categories, "visa", root, EXPECTED))
    problems = Problems("visa")
    missing_files: list[str] = []
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if row["object"] not in selected or row["split"] != split:
            continue
        label = {"normal": 0, "anomaly": 1}.get(row["label"])
        if label is None:
            raise DatasetError(f"visa: {csv_path} line {line}: label {row['label']!r}; expected 'normal' or 'anomaly'")
        image = root / row["image"]
        if row["image"] in seen:
            raise DatasetError(
                f"visa: {csv_path} lists {row['image']} twice (lines {seen[row['image']]} and {line}); "
                "each image must appear once"
            )
        seen[row["image"]] = line
        if not image.is_file():
            missing_files.append(f"{image} (line {line})")
            continue
        mask = None
        if label == 1:
            if row["mask"]:
                mask = root / row["mask"]
                if not mask.is_file():
                    problems.missing_mask(image, [mask])
                    mask = None
            else:
                problems.missing_mask(image, [Path("<mask column is empty>")])
        records.append(
            Record(
                str(image),
                label,
                row["object"],
                "bad" if label else "good",
                None if mask is None else str(mask),
                "nonzero",
            )
        )
    if missing_files:
        n = len(missing_files)
        raise DatasetNotFoundError(
            f"visa: {n} image(s) listed in {csv_path} do not exist:\n  "
            + "\n  ".join(missing_files[:10])
            + (f"\n  ... and {n - 10} more" if n > 10 else "")
            + f"\nExpected them relative to {root}; is root the folder that holds split_csv/?"
        )
    problems.raise_or_warn(allow_missing_masks)
    for cat in sorted(selected):
        if not any(r.category == cat for r in records):
            what = "training" if split == "train" else "test"
            raise DatasetError(f"visa '{cat}': empty {what} set: {csv_path} lists no {split} images for it")
    return records
