"""Real-IAD: images per resolution folder, splits in JSON files.

Layout::

    <root>/realiad_512/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg
    <root>/realiad_512/<category>/NG/<defect>/S0013/<...>.jpg  (+ its mask <...>.png)
    <root>/realiad_jsons/realiad_jsons/<category>.json          (or realiad_jsons/<category>.json)

A JSON file holds ``{"meta": ..., "train": [...], "test": [...]}``, each sample
``{"category", "anomaly_class" ("OK" = normal), "image_path", "mask_path" (or null)}`` with
paths relative to ``realiad_<res>/<category>/``. ``resolution`` picks the image folder
(default: the only one, else 512); ``json_dir`` picks the split set (e.g.
``realiad_jsons/realiad_jsons_sv`` for single view, ``..._fuiad_0.4`` for noisy training).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Union

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetError, DatasetNotFoundError
from minimaxad.data.layout import Problems, select_categories

__all__ = ["list_records", "list_categories", "resolve_dirs"]

EXPECTED = (
    "<root>/realiad_<resolution>/<category>/{OK,NG}/... images and "
    "<root>/realiad_jsons/realiad_jsons/<category>.json split files"
)


def resolve_dirs(
    root: Path, resolution: Union[str, int, None] = None, json_dir: Union[str, Path, None] = None
) -> tuple[Path, Path]:
    """(image folder realiad_<res>, JSON folder)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(f"realiad: dataset root {root} {kind}; expected {EXPECTED}")
    res_dirs = {
        p.name[len("realiad_") :]: p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("realiad_") and not p.name.startswith("realiad_jsons")
    }
    if resolution is not None:
        image_dir = res_dirs.get(str(resolution))
        if image_dir is None:
            raise DatasetNotFoundError(
                f"realiad: {root / f'realiad_{resolution}'} does not exist; available resolutions: "
                f"{sorted(res_dirs) or 'none'}"
            )
    elif len(res_dirs) == 1:
        image_dir = next(iter(res_dirs.values()))
    elif "512" in res_dirs:
        image_dir = res_dirs["512"]
    else:
        raise DatasetNotFoundError(
            f"realiad: cannot choose an image folder in {root} (found {sorted(res_dirs) or 'none'}); "
            f"expected {EXPECTED}; pass resolution= to choose"
        )
    if json_dir is not None:
        jd = Path(json_dir)
        jd = jd if jd.is_absolute() else root / jd
        if not jd.is_dir():
            raise DatasetNotFoundError(f"realiad: JSON folder {jd} does not exist")
    else:
        candidates = [root / "realiad_jsons" / "realiad_jsons", root / "realiad_jsons"]
        jd = next((c for c in candidates if c.is_dir() and any(c.glob("*.json"))), None)
        if jd is None:
            raise DatasetNotFoundError(
                f"realiad: no JSON split files in {candidates[0]} or {candidates[1]}; expected "
                "<category>.json files there (or pass json_dir=)"
            )
    return image_dir, jd


def list_categories(root: Path, resolution: Union[str, int, None] = None, json_dir=None) -> list[str]:
    """Category names: one per ``<category>.json`` split file of the JSON folder."""
    _, jd = resolve_dirs(root, resolution, json_dir)
    return sorted(p.stem for p in jd.glob("*.json"))


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"realiad: cannot read split file {path}: {exc}") from exc
    if not isinstance(meta, dict) or not ("train" in meta or "test" in meta):
        raise DatasetError(f"realiad: {path} is not a Real-IAD split file; expected keys 'train' and 'test'")
    return meta


def list_records(
    root: Path,
    split: str,
    categories: Optional[Iterable[str]] = None,
    resolution: Union[str, int, None] = None,
    json_dir: Union[str, Path, None] = None,
    allow_missing_masks: bool = False,
) -> list[Record]:
    """Real-IAD records of ``split`` as listed in the JSON files."""
    image_dir, jd = resolve_dirs(root, resolution, json_dir)
    available = sorted(p.stem for p in jd.glob("*.json"))
    selected = select_categories(available, categories, "realiad", jd, EXPECTED)
    problems = Problems("realiad")
    records: list[Record] = []
    for cat in selected:
        json_path = jd / f"{cat}.json"
        cat_dir = image_dir / cat
        if not cat_dir.is_dir():
            raise DatasetNotFoundError(f"realiad '{cat}': image folder {cat_dir} does not exist")
        samples = _load_json(json_path).get(split)
        if not samples:
            what = "training" if split == "train" else "test"
            raise DatasetError(f"realiad '{cat}': empty {what} set: {json_path} lists no '{split}' samples")
        missing: list[str] = []
        seen: set[str] = set()
        for k, s in enumerate(samples):
            try:
                rel, cls = s["image_path"], s["anomaly_class"]
            except (KeyError, TypeError):
                raise DatasetError(
                    f"realiad: {json_path} '{split}' entry {k} lacks image_path/anomaly_class: {s!r}"
                ) from None
            if rel in seen:
                raise DatasetError(f"realiad: {json_path} lists {rel} twice in '{split}'; each image must appear once")
            seen.add(rel)
            image = cat_dir / rel
            if not image.is_file():
                missing.append(str(image))
                continue
            label = 0 if cls == "OK" else 1
            mask = None
            if label and s.get("mask_path"):
                mask = cat_dir / s["mask_path"]
                if not mask.is_file():
                    problems.missing_mask(image, [mask])
                    mask = None
            records.append(
                Record(str(image), label, cat, "good" if label == 0 else str(cls), None if mask is None else str(mask))
            )
        if missing:
            n = len(missing)
            raise DatasetNotFoundError(
                f"realiad '{cat}': {n} image(s) listed in {json_path} do not exist:\n  "
                + "\n  ".join(missing[:10])
                + (f"\n  ... and {n - 10} more" if n > 10 else "")
                + f"\nExpected them relative to {cat_dir}; check resolution= and json_dir="
            )
    problems.raise_or_warn(allow_missing_masks)
    return records
