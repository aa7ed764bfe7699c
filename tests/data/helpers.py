"""Builders of tiny dataset trees (PIL, in tmp_path) in every supported layout."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
MAGNETIC_TILE = REPO_ROOT / ".." / "shared" / "data" / "magnetic_tile"


def photo(size=(48, 40), seed: int = 0) -> np.ndarray:
    """A smooth colourful (H, W, 3) uint8 image; size is (width, height)."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [
        127 + 100 * np.sin(x / rng.uniform(3, 9) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(3, 9)) for _ in range(3)
    ]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def save_image(path: Path, size=(48, 40), seed: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(photo(size, seed))
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def save_mask(path: Path, size=(48, 40), box=(10, 8, 30, 24), value: int = 255) -> Path:
    """A 0/value mask with a filled rectangle box=(x0, y0, x1, y1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    Image.fromarray(arr).save(path)
    return path


def make_mvtec(
    root: Path,
    categories=("bottle", "cable"),
    n_train: int = 3,
    n_good: int = 2,
    defects=("crack", "scratch"),
    n_defect: int = 2,
    ext: str = ".png",
    mask_suffix: str = "_mask",
    size=(48, 40),
    masks: bool = True,
) -> Path:
    """<root>/<cat>/{train/good, test/<good|defect>, ground_truth/<defect>/<name><suffix>.png}."""
    seed = 0
    for cat in categories:
        for i in range(n_train):
            save_image(root / cat / "train" / "good" / f"{i:03d}{ext}", size, seed := seed + 1)
        for i in range(n_good):
            save_image(root / cat / "test" / "good" / f"{i:03d}{ext}", size, seed := seed + 1)
        for d in defects:
            for i in range(n_defect):
                save_image(root / cat / "test" / d / f"{i:03d}{ext}", size, seed := seed + 1)
                if masks:
                    save_mask(root / cat / "ground_truth" / d / f"{i:03d}{mask_suffix}.png", size)
    return root


def tree_digest(root: Path) -> str:
    """Hash of every path, size, mtime and content under root (to prove nothing changed)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def first(ds, **where) -> Optional[dict]:
    """Index of the first record matching all attributes."""
    for i, r in enumerate(ds.records):
        if all(getattr(r, k) == v for k, v in where.items()):
            return i
    return None
