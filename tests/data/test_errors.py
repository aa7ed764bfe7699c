"""Bad input fails when the dataset is opened, with the path and what was expected."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
from PIL import Image

from minimaxad.data import (
    BadImageError,
    BadMaskError,
    DatasetError,
    DatasetNotFoundError,
    DataWarning,
    build_dataset,
    list_formats,
)

from .helpers import make_mvtec, photo, save_image, save_mask, tree_digest, write_json


@pytest.mark.parametrize("fmt", ["mvtec", "visa", "goodsad", "aebad", "mad", "realiad", "folder"])
def test_missing_root(tmp_path, fmt):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match=rf"{missing}.*does not exist; expected"):
        build_dataset(fmt, missing, split="train")
    assert fmt in list_formats()


def test_missing_category_lists_available(mvtec_root):
    with pytest.raises(DatasetNotFoundError, match=r"category 'screw' not found under .*available: bottle, cable"):
        build_dataset("mvtec", mvtec_root, split="train", categories=["bottle", "screw"])


def test_no_categories_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no categories found under .*empty; expected <root>/<category>/train/good"):
        build_dataset("mvtec", tmp_path / "empty", split="train")


def test_empty_training_set(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("bottle",), n_train=0)
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"'bottle': empty training set: no images .* in .*bottle/train/good"):
        build_dataset("mvtec", root, split="train")
    (root / "bottle" / "train" / "good").rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"training folder .*train/good does not exist"):
        build_dataset("mvtec", root, split="train")


def test_unreadable_and_truncated_images_fail_at_open(mvtec_root):
    (mvtec_root / "bottle/train/good/001.png").write_text("not an image")
    data = (mvtec_root / "bottle/train/good/002.png").read_bytes()
    (mvtec_root / "bottle/train/good/002.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError) as err:
        build_dataset("mvtec", mvtec_root, split="train")
    msg = str(err.value)
    assert "2 of 6 files cannot be used" in msg and "001.png" in msg and "002.png" in msg
    assert "skip_bad_images=True" in msg


def test_skip_bad_images_warns_with_count(mvtec_root):
    (mvtec_root / "bottle/train/good/001.png").write_text("not an image")
    with pytest.warns(DataWarning, match=r"(?s)skipped 1 of 6 images .*001\.png"):
        ds = build_dataset("mvtec", mvtec_root, split="train", image_size=16, skip_bad_images=True)
    assert len(ds) == 5 and not any(p.endswith("bottle/train/good/001.png") for p in ds.paths)
    with pytest.warns(DataWarning, match="skipped 1 of 6"):
        cached = build_dataset(
            "mvtec", mvtec_root, split="train", image_size=16, skip_bad_images=True, validate=False, cache=True
        )
    assert len(cached) == 5 and cached[4]["category"] == "cable"


def test_truncated_jpeg(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("nut",), ext=".jpg")
    p = root / "nut/test/good/001.jpg"
    Image.fromarray(photo((64, 64), 9)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadImageError, match=r"nut/test/good/001\.jpg"):
        build_dataset("mvtec", root, split="test")


def test_corrupt_middle_is_caught_by_full_check_or_at_load(mvtec_root):
    p = mvtec_root / "cable/train/good/000.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    data = bytearray(p.read_bytes())
    data[200:260] = bytes(b ^ 0xFF for b in data[200:260])  # end marker intact, pixels broken
    p.write_bytes(bytes(data))
    ds = build_dataset("mvtec", mvtec_root, split="train", categories=["cable"], image_size=16)  # quick: passes
    with pytest.raises(BadImageError, match=r"cable/train/good/000\.png"):
        ds[0]
    with pytest.raises(BadImageError, match=r"cable/train/good/000\.png"):
        build_dataset("mvtec", mvtec_root, split="train", validate="full")
    skipping = build_dataset(
        "mvtec", mvtec_root, split="train", categories=["cable"], image_size=16, skip_bad_images=True
    )
    with pytest.warns(DataWarning, match="using another training image"):
        assert skipping[0]["path"].endswith("cable/train/good/001.png")


def test_anomalous_image_without_mask(mvtec_root):
    (mvtec_root / "cable/ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        build_dataset("mvtec", mvtec_root, split="test")
    msg = str(err.value)
    assert "1 anomalous test images have no mask" in msg
    assert "cable/test/crack/001.png (expected" in msg and "ground_truth/crack/001_mask.png" in msg
    assert "allow_missing_masks=True" in msg
    with pytest.warns(DataWarning, match="1 anomalous test images have no mask"):
        ds = build_dataset("mvtec", mvtec_root, split="test", allow_missing_masks=True, image_size=16)
    assert ds.category_has_masks == {"bottle": True, "cable": False}
    assert int((~ds.has_masks).sum()) == 1


def test_mask_that_is_not_a_mask(mvtec_root):
    gt = mvtec_root / "bottle/ground_truth/scratch/000_mask.png"
    Image.fromarray(photo((48, 40), 3)).save(gt)  # a photo saved where the mask should be
    with pytest.raises(BadMaskError, match=r"(?s)bad mask of .*scratch/000\.png.*000_mask\.png.*not a binary mask"):
        build_dataset("mvtec", mvtec_root, split="test")
    Image.fromarray(np.array([[0, 2], [3, 1]], np.uint8)).save(gt)  # values out of range for 0/255
    with pytest.raises(BadMaskError, match=r"000_mask\.png: mask values are 0\.\.3"):
        build_dataset("mvtec", mvtec_root, split="test")
    gt.write_text("wrong file")
    with pytest.raises(BadMaskError, match=r"cannot decode mask .*000_mask\.png"):
        build_dataset("mvtec", mvtec_root, split="test")
    with pytest.warns(DataWarning, match="skipped 1 of 12"):
        ds = build_dataset("mvtec", mvtec_root, split="test", skip_bad_images=True)
    assert len(ds) == 11


def test_mask_size(mvtec_root):
    gt = mvtec_root / "bottle/ground_truth/crack/000_mask.png"
    save_mask(gt, (96, 80), box=(20, 16, 60, 48))  # twice the image size: fine, resized
    ds = build_dataset("mvtec", mvtec_root, split="test", categories=["bottle"], image_size=(20, 24))
    assert ds[0]["mask"].sum() == 80
    save_mask(gt, (40, 40))  # another aspect ratio: belongs to another image
    with pytest.raises(BadMaskError, match=r"mask is 40x40 but its image is 48x40"):
        build_dataset("mvtec", mvtec_root, split="test")


def test_ambiguous_mask_names(mvtec_root):
    save_mask(mvtec_root / "bottle/ground_truth/crack/000_mask.bmp")
    with pytest.raises(DatasetError, match=r"ambiguous mask for image '000' .*000_mask\.bmp, 000_mask\.png"):
        build_dataset("mvtec", mvtec_root, split="test")


def test_duplicate_names_in_flat_mask_folder(tmp_path):
    root = tmp_path / "mine"
    save_image(root / "train" / "a.png", (20, 20), 0)
    for defect in ("dent", "scratch"):
        save_image(root / "test" / defect / "img1.png", (20, 20), 1)
    save_mask(root / "masks" / "img1.png", (20, 20))
    with pytest.raises(DatasetError, match=r"duplicate file name 'img1' in .*dent, .*scratch.*ambiguous"):
        build_dataset("folder", root, split="test")


def test_duplicate_training_names(tmp_path):
    root = tmp_path / "mine"
    save_image(root / "train" / "a.png", (20, 20), 0)
    save_image(root / "train" / "good" / "a.png", (20, 20), 1)
    with pytest.raises(DatasetError, match=r"duplicate file name\(s\) \['a.png'\]"):
        build_dataset("folder", root, split="train")


def test_duplicates_in_split_files(tmp_path):
    root = tmp_path / "Real-IAD"
    save_image(root / "realiad_512/toy/OK/S1/a.jpg", (16, 16), 0)
    entry = {"category": "toy", "anomaly_class": "OK", "image_path": "OK/S1/a.jpg", "mask_path": None}
    write_json(root / "realiad_jsons/realiad_jsons/toy.json", {"train": [entry, entry], "test": []})
    with pytest.raises(DatasetError, match=r"lists OK/S1/a\.jpg twice"):
        build_dataset("realiad", root, split="train")
    with pytest.raises(DatasetError, match=r"empty test set: .*toy\.json lists no 'test' samples"):
        build_dataset("realiad", root, split="test")
    visa = tmp_path / "VisA"
    save_image(visa / "candle/Data/Images/Normal/0.JPG", (16, 16), 0)
    (visa / "split_csv").mkdir()
    with open(visa / "split_csv/1cls.csv", "w", newline="") as f:
        row = ("candle", "train", "normal", "candle/Data/Images/Normal/0.JPG", "")
        csv.writer(f).writerows([("object", "split", "label", "image", "mask"), row, row])
    with pytest.raises(DatasetError, match=r"lists candle/Data/Images/Normal/0\.JPG twice \(lines 2 and 3\)"):
        build_dataset("visa", visa, split="train")


def test_folder_layout_mistakes(tmp_path):
    root = tmp_path / "mine"
    save_image(root / "train" / "a.png", (20, 20), 0)
    save_image(root / "train" / "scratch" / "b.png", (20, 20), 1)
    with pytest.raises(DatasetError, match=r"sub-folder\(s\) \['scratch'\]; training images must all be normal"):
        build_dataset("folder", root, split="train")
    save_image(root / "test" / "c.png", (20, 20), 2)
    with pytest.raises(DatasetError, match=r"image\(s\) directly in .*test .*test/good/"):
        build_dataset("folder", root, split="test")


def test_argument_errors(mvtec_root):
    with pytest.raises(ValueError, match="unknown dataset format 'mvtek'; expected one of mvtec, visa"):
        build_dataset("mvtek", mvtec_root)
    with pytest.raises(ValueError, match="split='val'; expected 'train' or 'test'"):
        build_dataset("mvtec", mvtec_root, split="val")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['resolution'\] for format 'mvtec'"):
        build_dataset("mvtec", mvtec_root, resolution=512)


def test_nothing_on_disk_is_modified(mvtec_root):
    (mvtec_root / "bottle/train/good/001.png").write_text("not an image")
    before = tree_digest(mvtec_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = build_dataset("mvtec", mvtec_root, split="train", image_size=16, skip_bad_images=True, cache=True)
        test = build_dataset("mvtec", mvtec_root, split="test", image_size=16, validate="full")
    for i in range(len(ds)):
        ds[i]
    for i in range(len(test)):
        test[i]
    assert tree_digest(mvtec_root) == before


def test_skipping_every_image_of_a_category_is_an_error(mvtec_root):
    for p in (mvtec_root / "cable/train/good").iterdir():
        p.write_text("broken")
    with pytest.warns(DataWarning, match="skipped 3 of 6"):
        with pytest.raises(DatasetError, match="no usable images left in category cable"):
            build_dataset("mvtec", mvtec_root, split="train", skip_bad_images=True)
