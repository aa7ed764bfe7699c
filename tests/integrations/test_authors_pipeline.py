"""Our photo pipeline against the authors' own (their ``dataset.py``: torchvision's transforms over
PIL), and ``benchmarks/compare_fit_with_authors_script.py`` end to end.

Their ``dataset.py`` needs torchvision, which does not load beside this project's CPU torch:
scripts/test.sh runs this file in ./.venv-anomalib (which has it). Elsewhere it is skipped with that
reason; there (MINIMAXAD_REQUIRE_ANOMALIB=1) a failing import is an error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import torchvision.transforms  # noqa: F401
except Exception as exc:  # ImportError, or a torchvision built for another torch
    if os.environ.get("MINIMAXAD_REQUIRE_ANOMALIB") == "1":
        raise
    pytest.skip(
        f"needs torchvision ({type(exc).__name__}); scripts/test.sh runs this in ./.venv-anomalib",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_fit_with_authors_script as compare  # noqa: E402

AUTHORS_CODE = compare.DEFAULT_AUTHORS_CODE
if not (AUTHORS_CODE / "dataset.py").is_file():
    pytest.skip(f"the authors' code is not at {AUTHORS_CODE}", allow_module_level=True)


def _texture(seed: int, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: size[0], : size[1]]
    base = 90 + 40 * np.sin(x / 3.0 + seed) + 30 * np.cos(y / 5.0)
    return np.clip(base[..., None] + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)


def _save(kind: str, array: np.ndarray, path: Path) -> Path:
    """One photo in one of the awkward forms real sets come in."""
    im = Image.fromarray(array)
    if kind == "gray":
        im.convert("L").save(path.with_suffix(".png"))
    elif kind == "rgba":
        Image.fromarray(np.dstack([array, np.full(array.shape[:2], 90, np.uint8)])).save(path.with_suffix(".png"))
    elif kind == "palette":
        im.convert("P").save(path.with_suffix(".png"))
    elif kind == "cmyk":
        im.convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
    elif kind == "jpeg":
        im.save(path.with_suffix(".jpg"), quality=90)
    elif kind == "deep":  # a dark 16-bit photo (values 0..510 of 65535)
        Image.fromarray(array[..., 0].astype(np.uint16) * 2).save(path.with_suffix(".png"))
    elif kind == "exif":  # stored upside down, with the orientation that turns it upright
        exif = Image.Exif()
        exif[0x0112] = 3
        im.save(path.with_suffix(".jpg"), exif=exif.tobytes(), quality=90)
    else:
        im.save(path.with_suffix(".png"))
    return path


KINDS = ["rgb", "gray", "rgba", "palette", "cmyk", "jpeg", "deep", "exif"]


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("authors") / "part"
    for folder in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (root / folder).mkdir(parents=True)
    for i, kind in enumerate(KINDS):
        _save(kind, _texture(i), root / "train" / "good" / f"{kind}_{i}")
        _save(kind, _texture(20 + i), root / "test" / "good" / f"{kind}")
        defect = _texture(40 + i)
        defect[10:20, 20:34] = 250
        _save(kind, defect, root / "test" / "scratch" / f"{kind}")
        mask = np.zeros(defect.shape[:2], np.uint8)
        mask[10:20, 20:34] = 255
        Image.fromarray(mask).save(root / "ground_truth" / "scratch" / f"{kind}_mask.png")
    return root


def test_our_tensors_are_theirs_except_where_we_read_photos_better(category, tmp_path):
    summary = compare.compare_inputs(category, 32, Path(sys.executable), AUTHORS_CODE, 1, tmp_path)
    assert summary["photos_compared"] == 3 * len(KINDS) and not summary["only_theirs"] and not summary["only_ours"]
    assert summary["mask_pixels_differing"] == 0
    differing = {row["photo"]: row["why"] for row in summary["differing"]}
    # every 8-bit mode (grayscale, alpha, palette, CMYK, JPEG) gives their exact tensor; deep and
    # EXIF-rotated photos differ, for the reason given
    expected = {
        f"{split}/{folder}/{name}"
        for split, folder, stem in (("train", "good", "{k}_{i}"), ("test", "good", "{k}"), ("test", "scratch", "{k}"))
        for i, k in enumerate(KINDS)
        if k in ("deep", "exif")
        for name in [stem.format(k=k, i=i) + (".png" if k == "deep" else ".jpg")]
    }
    assert set(differing) == expected
    assert all(("more than 8 bits" in why) == ("deep" in photo) for photo, why in differing.items())
    assert all(("EXIF" in why) == ("exif" in photo) for photo, why in differing.items())
    deep = np.asarray(Image.open(category / "train" / "good" / f"deep_{KINDS.index('deep')}.png"))
    assert summary["white_level"] == pytest.approx(np.percentile(deep, 99.9), rel=1e-5)  # its own range


@pytest.mark.slow
def test_one_seed_of_both_trainings_prints_their_table(category, tmp_path, capsys):
    out = tmp_path / "comparison.json"
    argv = ["--data", str(category), "--seeds", "111", "--image-size", "32", "--epochs", "1", "--batch-size", "4"]
    assert compare.main([*argv, "--authors-python", sys.executable, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed 111: theirs P-AUROC" in printed and "mean ± std" in printed
    (run,) = json.loads(out.read_text())["runs"]
    for side in ("authors", "ours"):
        assert all(0.0 <= run[side][metric] <= 1.0 for metric in compare.METRICS)
