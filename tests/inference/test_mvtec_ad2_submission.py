"""``write_mvtec_ad2_submission``: the private test sets of MVTec AD 2 scored into the evaluation
server's layout, checked file by file against the predictor's own maps and thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from minimaxad.data.io import DatasetNotFoundError
from minimaxad.engine.checkpoint import read_checkpoint, save_checkpoint
from minimaxad.inference.mvtec_ad2_submission import write_mvtec_ad2_submission
from minimaxad.inference.predict import Predictor

from ..data.helpers import save_image, save_mask

CATEGORIES = ("can", "rice")
SIZES = ((64, 48), (80, 60))  # (width, height): non-square, and two sizes within each set
PRIVATE = ("test_private", "test_private_mixed")


def make_tree(root: Path) -> Path:
    """A tiny MVTec AD 2 tree: 2 categories, train/validation/test_public and both private sets."""
    seed = 0
    for cat in CATEGORIES:
        c = root / cat
        for i in range(4):
            save_image(c / "train" / "good" / f"{i:03d}_regular.png", SIZES[0], seed := seed + 1)
        for i in range(2):
            save_image(c / "validation" / "good" / f"{i:03d}_regular.png", SIZES[0], seed := seed + 1)
            save_image(c / "test_public" / "good" / f"{i:03d}_regular.png", SIZES[i], seed := seed + 1)
            save_image(c / "test_public" / "bad" / f"{i:03d}_regular.png", SIZES[i], seed := seed + 1)
            save_mask(c / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", SIZES[i])
        for split, suffix in zip(PRIVATE, ("regular", "mixed")):
            for i in range(3):
                save_image(c / split / f"{i:03d}_{suffix}.png", SIZES[i % 2], seed := seed + 1)
    return root


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def ad2(tmp_path_factory, single_thread_module):
    """The tree and a unified micro model trained on it (thresholds calibrated on validation/good)."""
    from minimaxad.cli import main

    base = tmp_path_factory.mktemp("ad2_submission")
    root = make_tree(base / "mvtec_ad_2")
    run = base / "run"
    args = ["fit", "--data", str(root), "--format", "mvtec_ad2", "--unified", "--output", str(run)]
    args += ["--backbone", "unireplknet_micro", "--encoder-weights", "none", "--image-size", "64"]
    args += ["--batch-size", "4", "--max-steps", "2", "--no-eval", "--quiet"]
    assert main(args) == 0
    assert sorted(read_checkpoint(run / "checkpoint.pt")["categories"]) == list(CATEGORIES)
    return root, run


def write(ad2_fixture, output: Path, **kwargs):
    root, run = ad2_fixture
    lines: list[str] = []
    kwargs.setdefault("device", "cpu")
    result = write_mvtec_ad2_submission(run, root, output, progress=False, echo=lines.append, **kwargs)
    return result, lines


def expected_maps(predictor: Predictor, photos: list[Path], category: str) -> list[np.ndarray]:
    """The predictor's float32 maps brought to each photo's size, batched as the writer batches them."""
    result = predictor.predict(photos, batch_size=16, category=category)
    out = []
    for amap, photo in zip(result.maps, photos):
        width, height = Image.open(photo).size
        tensor = torch.from_numpy(np.asarray(amap, np.float32))[None, None]
        out.append(F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy())
    return out


def test_writes_each_map_and_mask_at_the_photo_size(ad2, tmp_path):
    root, run = ad2
    before = listing(root)
    output = tmp_path / "out"
    result, lines = write(ad2, output)
    submission = output / "submission"
    assert result["submission"] == str(submission.resolve()) and result["photos"] == 12 and result["files"] == 24

    # exactly the server's layout: the two folders, one file per photo, named after it
    assert sorted(p.name for p in output.iterdir()) == ["submission", "submission.json"]
    assert sorted(p.name for p in submission.iterdir()) == ["anomaly_images", "anomaly_images_thresholded"]
    expected_files = {
        f"{kind}/{cat}/{split}/{i:03d}_{suffix}.{ext}"
        for kind, ext in (("anomaly_images", "tiff"), ("anomaly_images_thresholded", "png"))
        for cat in CATEGORIES
        for split, suffix in zip(PRIVATE, ("regular", "mixed"))
        for i in range(3)
    }
    assert set(listing(submission)) == expected_files

    predictor = Predictor.from_checkpoint(run, device="cpu")
    record = json.loads((output / "submission.json").read_text())
    for cat in CATEGORIES:
        threshold = predictor.thresholds_for(cat).pixel
        assert threshold.value is not None
        entry = record["categories"][cat]
        assert entry["checkpoint"] == str(run / "checkpoint.pt")
        assert entry["pixel_threshold"] == threshold.value and entry["pixel_threshold_note"] == threshold.note
        assert result["categories"][cat] == entry
        for split, suffix in zip(PRIVATE, ("regular", "mixed")):
            assert entry["splits"][split] == {"photos": 3, "anomaly_images": 3, "anomaly_images_thresholded": 3}
            photos = [root / cat / split / f"{i:03d}_{suffix}.png" for i in range(3)]
            for photo, want in zip(photos, expected_maps(predictor, photos, cat)):
                width, height = Image.open(photo).size
                assert want.shape == (height, width) != (64, 64)
                tiff = tifffile.imread(submission / "anomaly_images" / cat / split / f"{photo.stem}.tiff")
                assert tiff.dtype == np.float16 and tiff.shape == (height, width)
                np.testing.assert_allclose(tiff.astype(np.float32), want, rtol=2**-10, atol=1e-6)
                png = Image.open(submission / "anomaly_images_thresholded" / cat / split / f"{photo.stem}.png")
                assert png.mode == "L" and png.size == (width, height)
                mask = np.asarray(png)
                assert set(np.unique(mask)) <= {0, 255}
                np.testing.assert_array_equal(mask == 255, want >= threshold.value)

    assert listing(root) == before  # nothing written under the dataset
    # 2 of the 8 categories: the echo says the checker will refuse it, and what to run next
    assert not result["complete"] and any("fabric" in w for w in result["warnings"])
    text = "\n".join(lines)
    assert "wrote 24 file(s) for 12 photo(s)" in text and "categories missing for the server" in text
    assert f"check_and_prepare_data_for_upload.py {submission.resolve()}" in text
    assert "https://benchmark.mvtec.com" in text


def test_user_pixel_threshold_and_test_public(ad2, tmp_path):
    root, run = ad2
    predictor = Predictor.from_checkpoint(run, device="cpu")
    photos = [
        root / "rice" / "test_public" / kind / f"{i:03d}_regular.png" for kind in ("good", "bad") for i in range(2)
    ]
    maps = expected_maps(predictor, photos, "rice")
    threshold = float(np.median(np.concatenate([m.ravel() for m in maps])))  # about half the pixels flagged
    result, _ = write(ad2, tmp_path / "out", splits=["test_public"], categories=["rice"], pixel_threshold=threshold)
    submission = Path(result["submission"])
    assert result["categories"]["rice"]["pixel_threshold"] == threshold
    assert "set by the user" in result["categories"]["rice"]["pixel_threshold_note"]
    assert any("test_public is for offline checks only" in w for w in result["warnings"])
    flagged = 0
    for photo, want in zip(photos, maps):
        rel = Path("rice", "test_public", photo.parent.name, photo.stem)
        tiff = tifffile.imread(submission / "anomaly_images" / f"{rel}.tiff")
        np.testing.assert_allclose(tiff.astype(np.float32), want, rtol=2**-10, atol=1e-6)
        mask = np.asarray(Image.open(submission / "anomaly_images_thresholded" / f"{rel}.png"))
        np.testing.assert_array_equal(mask, np.where(want >= threshold, 255, 0).astype(np.uint8))
        flagged += int((mask == 255).sum())
    assert 0 < flagged < sum(m.size for m in maps)
    assert {p.name for p in (submission / "anomaly_images" / "rice" / "test_public").iterdir()} == {"good", "bad"}


def test_an_existing_submission_is_kept_unless_overwrite(ad2, tmp_path):
    output = tmp_path / "out"
    write(ad2, output, categories=["can"], splits=["test_private"])
    stale = output / "submission" / "anomaly_images" / "can" / "test_private" / "999_regular.tiff"
    stale.write_bytes(b"left from an earlier run")
    before = listing(output)
    with pytest.raises(FileExistsError, match=r"is not empty; choose a new folder, or pass overwrite=True"):
        write(ad2, output, categories=["can"], splits=["test_private"])
    assert listing(output) == before
    result, _ = write(ad2, output, categories=["can"], splits=["test_private"], overwrite=True)
    assert not stale.exists() and result["files"] == 6
    assert len(list((output / "submission").rglob("*.*"))) == 6


def test_a_missing_split_folder_is_named_before_anything_is_written(ad2, tmp_path):
    import shutil

    root, _ = ad2
    copy = tmp_path / "mvtec_ad_2"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "rice" / "test_private_mixed")
    output = tmp_path / "out"
    with pytest.raises(
        DatasetNotFoundError, match=r"'rice': private test folder .*rice/test_private_mixed does not exist"
    ):
        write((copy, ad2[1]), output)
    assert not output.exists()


def test_arguments_that_cannot_work_are_refused(ad2, tmp_path):
    root, run = ad2
    with pytest.raises(ValueError, match=r"expected one or more of test_private, test_private_mixed, test_public"):
        write(ad2, tmp_path / "a", splits=["validation"])
    with pytest.raises(DatasetNotFoundError, match=r"category 'vial' not found"):
        write(ad2, tmp_path / "b", categories=["vial"])
    with pytest.raises(ValueError, match=r"overlap; choose an output folder outside the dataset"):
        write(ad2, root / "can" / "submission")
    assert not (root / "can" / "submission").exists()
    # a category of the data that the model does not hold
    import shutil

    copy = shutil.copytree(root, tmp_path / "mvtec_ad_2")
    shutil.copytree(copy / "can", copy / "vial")
    with pytest.raises(ValueError, match=r"no checkpoint holds category 'vial'; the checkpoint\(s\) hold can, rice"):
        write((copy, run), tmp_path / "c", categories=["vial"])
    result, _ = write((copy, run), tmp_path / "d", splits=["test_private"])  # by default: skipped, and said so
    assert sorted(result["categories"]) == ["can", "rice"]
    assert "no checkpoint holds vial of the dataset: not scored" in result["warnings"]
    assert not (tmp_path / "d" / "submission" / "anomaly_images" / "vial").exists()
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_checkpoint_without_pixel_threshold_is_refused(ad2, tmp_path):
    root, run = ad2
    state = read_checkpoint(run / "checkpoint.pt")
    state.pop("path")
    calibration = state["thresholds"]
    calibration.pop("pixel", None)
    for own in (calibration.get("per_category") or {}).values():
        own.pop("pixel", None)
    save_checkpoint(tmp_path / "no_pixel.pt", state)
    lines: list[str] = []
    with pytest.raises(ValueError, match=r"no pixel threshold for 'can' .*Calibrate.*--pixel-threshold") as info:
        write_mvtec_ad2_submission(tmp_path / "no_pixel.pt", root, tmp_path / "out", device="cpu", echo=lines.append)
    assert "'rice'" in str(info.value) and "Calibrate the model" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_without_tifffile_the_error_says_what_to_install(ad2, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tifffile", None)  # import tifffile now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'minimaxad\[mvtec-ad2\]'"):
        write(ad2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_maps_already_at_the_photo_size_are_written_as_they_are(ad2, tmp_path, monkeypatch):
    """With tiling, ``result.maps`` is one full-resolution map per photo, of different sizes: no resize."""
    from types import SimpleNamespace

    made: dict[tuple[int, int], np.ndarray] = {}

    def predict(self, photos, batch_size=16, category=None):
        sizes = [Image.open(p).size for p in photos]
        maps = []
        for width, height in sizes:
            amap = np.linspace(0.0, 70000.0, width * height, dtype=np.float32).reshape(height, width)
            made[(width, height)] = amap
            maps.append(amap)
        return SimpleNamespace(maps=maps, sizes=sizes)

    monkeypatch.setattr(Predictor, "predict", predict)
    result, _ = write(ad2, tmp_path / "out", categories=["can"], splits=["test_private"], pixel_threshold=35000.0)
    folder = Path(result["submission"])
    for i in range(3):
        want = made[SIZES[i % 2]]
        tiff = tifffile.imread(folder / "anomaly_images" / "can" / "test_private" / f"{i:03d}_regular.tiff")
        assert tiff.shape == want.shape and np.isfinite(tiff).all()  # 70000 > float16's 65504: clipped, not inf
        np.testing.assert_array_equal(tiff, np.minimum(want, 65504).astype(np.float16))
        mask = np.asarray(
            Image.open(folder / "anomaly_images_thresholded" / "can" / "test_private" / f"{i:03d}_regular.png")
        )
        np.testing.assert_array_equal(mask == 255, want >= 35000.0)


def test_the_predict_command_writes_the_submission(ad2, tmp_path, capsys):
    from minimaxad.cli import main

    root, run = ad2
    output = tmp_path / "cli"
    argv = ["predict", "--checkpoint", str(run), "--mvtec-ad2", str(root), "--output", str(output), "--quiet"]
    assert main(argv + ["--categories", "can", "--splits", "test_private"]) == 0
    tiffs = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.tiff"))
    photos = sorted((root / "can" / "test_private").glob("*.png"))
    assert tiffs == [f"submission/anomaly_images/can/test_private/{p.stem}.tiff" for p in photos]
    assert "check_and_prepare_data_for_upload.py" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not both"):  # photos and --mvtec-ad2 together are refused
        main(argv + [str(photos[0])])
