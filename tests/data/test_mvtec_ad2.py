"""MVTec AD 2 (``--format mvtec_ad2``): records of each split, errors that say what is missing, the
private sets, the download instructions, and ``fit`` calibrating on validation/good."""

from __future__ import annotations

from pathlib import Path

import pytest

from minimaxad.data import build_dataset, list_categories, list_formats, mvtec_ad2
from minimaxad.data import download as dl
from minimaxad.data.base import DataWarning
from minimaxad.data.build import validation_split
from minimaxad.data.io import DatasetError, DatasetNotFoundError

from .helpers import make_mvtec, save_image, save_mask

SIZE = (40, 32)  # (width, height)


def make_mvtec_ad2(
    root: Path, categories=("can", "rice"), n_train: int = 6, n_val: int = 3, n_good: int = 2, n_bad: int = 2
) -> Path:
    """<root>/<cat>/{train/good, validation/good, test_public/{good,bad,ground_truth/bad}, test_private*}."""
    seed = 0
    for cat in categories:
        c = root / cat
        for i in range(n_train):
            save_image(c / "train" / "good" / f"{i:03d}_regular.png", SIZE, seed := seed + 1)
        for i in range(n_val):
            save_image(c / "validation" / "good" / f"{i:03d}_regular.png", SIZE, seed := seed + 1)
        for i in range(n_good):
            save_image(c / "test_public" / "good" / f"{i:03d}_regular.png", SIZE, seed := seed + 1)
        for i in range(n_bad):
            save_image(c / "test_public" / "bad" / f"{i:03d}_regular.png", SIZE, seed := seed + 1)
            save_mask(c / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", SIZE)
        for name in mvtec_ad2.PRIVATE_SETS:
            for i in range(2):
                save_image(c / name / f"{i:03d}_regular.png", SIZE, seed := seed + 1)
    return root


@pytest.fixture
def ad2_root(tmp_path: Path) -> Path:
    return make_mvtec_ad2(tmp_path / "mvtec_ad_2")


def test_registered_with_aliases_and_validation_split(ad2_root):
    assert "mvtec_ad2" in list_formats()
    assert list_categories("mvtec_ad2", ad2_root) == ["can", "rice"]
    assert list_categories("mvtec-ad-2", ad2_root / "can") == ["can"]  # one category folder as root
    assert validation_split("mvtec_ad2") == "validation/good"
    assert validation_split("MVTec_AD_2") == "validation/good"
    for other in ("mvtec", "visa", "goodsad", "aebad", "mad", "realiad", "folder"):
        assert validation_split(other) is None


def test_train_validation_and_test_records(ad2_root):
    train = mvtec_ad2.list_records(ad2_root, "train")
    assert len(train) == 12 and {r.category for r in train} == {"can", "rice"}
    assert all(r.label == 0 and r.mask_path is None and r.defect_type == "good" for r in train)
    assert all(Path(r.path).parent == ad2_root / r.category / "train" / "good" for r in train)

    val = mvtec_ad2.list_records(ad2_root, "validation", ["rice"])
    assert [Path(r.path) for r in val] == [
        ad2_root / "rice" / "validation" / "good" / f"{i:03d}_regular.png" for i in range(3)
    ]
    assert all(r.label == 0 and r.category == "rice" for r in val)

    test = mvtec_ad2.list_records(ad2_root, "test", "can")
    good = [r for r in test if r.label == 0]
    bad = [r for r in test if r.label == 1]
    assert len(good) == 2 and len(bad) == 2 and all(r.category == "can" for r in test)
    assert all(r.mask_path is None and r.defect_type == "good" and r.has_mask for r in good)
    for r in bad:
        stem = Path(r.path).stem
        assert r.defect_type == "bad"
        assert Path(r.mask_path) == ad2_root / "can" / "test_public" / "ground_truth" / "bad" / f"{stem}_mask.png"


def test_build_dataset_splits(ad2_root):
    test = build_dataset("mvtec_ad2", ad2_root, split="test", categories=["can"], image_size=32)
    item = test[[r.label for r in test.records].index(1)]
    assert item["label"] == 1 and item["has_mask"] and item["mask"].shape == (1, 32, 32) and item["mask"].max() == 1
    assert test.category_has_masks["can"]
    val = build_dataset("mvtec_ad2", ad2_root, split="validation", image_size=32)
    assert len(val) == 6 and val.split == "train" and "validation" in val.name
    assert all(Path(p).parent.name == "good" and Path(p).parent.parent.name == "validation" for p in val.paths)
    with pytest.raises(ValueError, match="augment=True is for the training split"):
        build_dataset("mvtec_ad2", ad2_root, split="validation", augment=True)
    # the other formats keep their two splits
    with pytest.raises(ValueError, match="format 'mvtec' has no validation split"):
        build_dataset("mvtec", make_mvtec(ad2_root.parent / "mv"), split="validation")
    with pytest.raises(ValueError, match="split='val'; expected 'train' or 'validation' or 'test'"):
        build_dataset("mvtec_ad2", ad2_root, split="val")


def test_missing_mask_names_the_image_and_where_it_was_looked_for(ad2_root):
    mask = ad2_root / "rice" / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png"
    mask.unlink()
    with pytest.raises(DatasetError, match="1 anomalous test images have no mask") as info:
        mvtec_ad2.list_records(ad2_root, "test")
    assert str(ad2_root / "rice" / "test_public" / "bad" / "001_regular.png") in str(info.value)
    assert str(mask) in str(info.value) and "allow_missing_masks" in str(info.value)
    with pytest.warns(DataWarning, match="no mask"):
        records = mvtec_ad2.list_records(ad2_root, "test", allow_missing_masks=True)
    assert sum(not r.has_mask for r in records) == 1


@pytest.mark.parametrize(
    "remove, split, message",
    [
        ("can/validation", "validation", r"'can': validation folder .*can/validation/good does not exist"),
        ("can/train/good", "train", r"'can': train folder .*can/train/good does not exist"),
        ("rice/test_public/bad", "test", r"'rice': public test folder .*rice/test_public/bad does not exist"),
        ("rice/test_public", "test", r"'rice': public test folder .*rice/test_public does not exist"),
    ],
)
def test_a_missing_split_says_what_is_missing(ad2_root, remove, split, message):
    import shutil

    shutil.rmtree(ad2_root / remove)
    with pytest.raises(DatasetNotFoundError, match=message):
        mvtec_ad2.list_records(ad2_root, split)


def test_empty_split_unknown_category_and_missing_root(ad2_root, tmp_path):
    for p in (ad2_root / "can" / "validation" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="empty validation set: no images"):
        mvtec_ad2.list_records(ad2_root, "validation", ["can"])
    with pytest.raises(DatasetNotFoundError, match="category 'vial' not found .* available: can, rice"):
        mvtec_ad2.list_records(ad2_root, "train", ["vial"])
    with pytest.raises(DatasetNotFoundError, match="does not exist; expected <root>/<category>/train/good"):
        mvtec_ad2.list_records(tmp_path / "nowhere", "train")


def test_private_sets_are_listed(ad2_root):
    private = mvtec_ad2.list_private_images(ad2_root)
    assert sorted(private) == ["can", "rice"]
    assert private["can"] == [ad2_root / "can" / "test_private" / f"{i:03d}_regular.png" for i in range(2)]
    mixed = mvtec_ad2.list_private_images(ad2_root, "test_private_mixed", ["rice"])
    assert list(mixed) == ["rice"] and all(p.parent.name == "test_private_mixed" for p in mixed["rice"])
    with pytest.raises(ValueError, match="expected one of test_private, test_private_mixed"):
        mvtec_ad2.list_private_images(ad2_root, "test_public")
    import shutil

    shutil.rmtree(ad2_root / "rice" / "test_private_mixed")
    with pytest.raises(DatasetNotFoundError, match=r"'rice': private test folder .*test_private_mixed does not exist"):
        mvtec_ad2.list_private_images(ad2_root, "test_private_mixed")


def test_download_prints_where_to_get_it(tmp_path):
    lines: list[str] = []
    assert dl.download_dataset("mvtec_ad2", tmp_path, echo=lines.append) is None
    text = "\n".join(lines)
    assert "mvtec.com/company/research/datasets/mvtec-ad-2" in text and "form" in text
    assert f"--format mvtec_ad2 --data {tmp_path / 'mvtec_ad_2'}" in text and "test_public/{good,bad" in text
    assert list(tmp_path.iterdir()) == []


def test_fit_calibrates_on_validation_photos(tmp_path, capsys):
    from minimaxad.cli import main
    from minimaxad.engine.checkpoint import read_checkpoint

    root = make_mvtec_ad2(tmp_path / "ad2", categories=("can",), n_train=6, n_val=3)
    out = tmp_path / "run"
    args = ["fit", "--data", str(root), "--format", "mvtec_ad2", "--categories", "can", "--output", str(out)]
    args += ["--backbone", "unireplknet_micro", "--encoder-weights", "none", "--image-size", "64"]
    args += ["--batch-size", "2", "--max-steps", "2", "--val-fraction", "0.5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # every training photo trains (val-fraction 0.5 would hold 3 out); the 3 validation photos calibrate
    assert "6 images, thresholds from 3 validation photos (validation/good), none held out" in printed
    ckpt = read_checkpoint(out / "can" / "checkpoint.pt")
    thresholds = ckpt["thresholds"]
    assert thresholds["image"]["value"] is not None and thresholds["pixel"]["value"] is not None
    assert " 3 " in thresholds["image"]["note"] and "TRAINING" not in thresholds["source"]
    assert (out / "metrics.json").is_file()


def test_threshold_note_names_the_validation_photos(tmp_path):
    from minimaxad.cli import main
    from minimaxad.engine.checkpoint import read_checkpoint

    root = make_mvtec_ad2(tmp_path / "ad2", categories=("can",), n_train=4, n_val=2)
    out = tmp_path / "run"
    args = ["fit", "--data", str(root), "--format", "mvtec_ad2", "--output", str(out), "--quiet"]
    args += ["--backbone", "unireplknet_micro", "--encoder-weights", "none", "--image-size", "64"]
    args += ["--batch-size", "2", "--max-steps", "1", "--no-eval"]
    assert main(args) == 0
    ckpt = read_checkpoint(out / "can" / "checkpoint.pt")
    assert "validation" in ckpt["thresholds"]["source"] and "validation" in ckpt["thresholds"]["image"]["note"]
