"""Every supported layout, built tiny in tmp_path: items, labels, masks, categories, counts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from minimaxad.data import (
    DatasetError,
    DatasetNotFoundError,
    build_dataset,
    build_unified,
    list_categories,
    list_formats,
)

from .helpers import first, make_mvtec, save_image, save_mask, write_json


def test_list_formats():
    assert list_formats() == ["mvtec", "visa", "goodsad", "aebad", "mad", "realiad", "mvtec_ad2", "folder"]


# --------------------------------------------------------------------------- MVTec AD


def test_mvtec_items(mvtec_root):
    ds = build_dataset("mvtec", mvtec_root, split="test", categories=["bottle"], image_size=(20, 24))
    assert len(ds) == 2 + 2 * 2 and ds.categories == ["bottle"]
    assert ds.labels.tolist() == [1, 1, 0, 0, 1, 1]  # crack, good, scratch (sorted folders)
    assert ds.defect_types == ["crack", "crack", "good", "good", "scratch", "scratch"]
    item = ds[0]
    assert set(item) == {"image", "mask", "label", "category", "path", "defect_type", "has_mask"}
    assert item["image"].shape == (3, 20, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 20, 24) and item["mask"].dtype == torch.float32
    assert item["label"] == 1 and item["category"] == "bottle" and item["has_mask"] is True
    assert item["path"].endswith("bottle/test/crack/000.png")
    # the 48x40 mask box (10, 8)-(30, 24) lands on (5, 4)-(15, 12) at half size
    expected = torch.zeros(20, 24)
    expected[4:12, 5:15] = 1
    assert torch.equal(item["mask"][0], expected)
    good = ds[2]
    assert good["label"] == 0 and good["mask"].sum() == 0 and good["defect_type"] == "good"
    assert ds.category_has_masks == {"bottle": True}


def test_mvtec_all_categories_and_train(mvtec_root):
    train = build_dataset("mvtec", mvtec_root, split="train", image_size=32)
    assert train.categories == ["bottle", "cable"] and len(train) == 6
    assert train.labels.sum() == 0 and train.item_categories == ["bottle"] * 3 + ["cable"] * 3
    assert build_dataset("mvtec", mvtec_root, split="test", categories="cable", image_size=32).categories == ["cable"]
    assert list_categories("mvtec", mvtec_root) == ["bottle", "cable"]


def test_root_may_be_one_category(mvtec_root):
    ds = build_dataset("mvtec", mvtec_root / "cable", split="test", image_size=32)
    assert ds.categories == ["cable"] and len(ds) == 6


def test_mvtec_without_ground_truth_gives_image_level_only(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("tile",), masks=False)
    ds = build_dataset("mvtec", root, split="test", image_size=16)
    assert ds.category_has_masks == {"tile": False}
    anomalous = ds[first(ds, label=1)]
    assert anomalous["has_mask"] is False and anomalous["mask"].sum() == 0
    assert ds[first(ds, label=0)]["has_mask"] is True


def test_magnetic_tile_real_grayscale_jpegs(magnetic_tile):
    train = build_dataset("mvtec", magnetic_tile.parent, split="train", categories=["magnetic_tile"], validate=False)
    assert len(train) == 762 and train.categories == ["magnetic_tile"]
    test = build_dataset("mvtec", magnetic_tile, split="test", image_size=64)
    assert len(test) == 582 and int(test.labels.sum()) == 392
    assert sorted(set(test.defect_types)) == ["blowhole", "break", "crack", "fray", "good", "uneven"]
    assert test.category_has_masks == {"magnetic_tile": True}
    item = test[first(test, defect_type="blowhole")]
    assert item["image"].shape == (3, 64, 64)
    # grayscale: the three channels are equal before normalisation
    assert torch.allclose(item["image"][0] * 0.229 + 0.485, item["image"][1] * 0.224 + 0.456, atol=1e-6)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    # some anomalous masks are empty in this dataset: still anomalous, zero mask
    sums = [test[i]["mask"].sum().item() for i in np.flatnonzero(test.labels)[:60]]
    assert max(sums) > 0


# --------------------------------------------------------------------------- VisA


def _make_visa_released(root: Path) -> Path:
    rows = [("object", "split", "label", "image", "mask")]
    for obj, seed in (("candle", 0), ("pcb1", 10)):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            save_image(root / rel, (40, 32), seed + i)
            rows.append((obj, "train" if i < 2 else "test", "normal", rel, ""))
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save_image(root / rel, (40, 32), seed + 5 + i)
            save_mask(root / mrel, (40, 32), box=(0, 0, 20, 16), value=i + 1)  # label values 1, 2
            rows.append((obj, "test", "anomaly", rel, mrel))
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_visa_released_layout(tmp_path):
    root = _make_visa_released(tmp_path / "VisA")
    train = build_dataset("visa", root, split="train", image_size=16)
    assert train.categories == ["candle", "pcb1"] and len(train) == 4 and train.labels.sum() == 0
    test = build_dataset("visa", root, split="test", categories=["candle"], image_size=(16, 20))
    assert len(test) == 3 and test.labels.tolist() == [0, 1, 1]
    item = test[1]
    assert item["defect_type"] == "bad" and item["has_mask"]
    # label mask value 1 counts as defect: the top-left quarter
    assert item["mask"][0, :8, :10].min() == 1 and item["mask"].sum() == 80


def test_visa_converted_1cls_layout(tmp_path):
    root = tmp_path / "VisA_pytorch"
    make_mvtec(root / "1cls", categories=("capsules",), defects=("bad",), ext=".JPG", mask_suffix="")
    ds = build_dataset("visa", root, split="test", image_size=16)
    assert ds.categories == ["capsules"] and ds.labels.tolist() == [1, 1, 0, 0]
    assert ds.records[0].mask_path.endswith("ground_truth/bad/000.png")
    assert ds[0]["mask"].sum() > 0


def test_visa_split_file_problems(tmp_path):
    root = _make_visa_released(tmp_path / "VisA")
    (root / "pcb1/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)1 image\(s\) listed in .*1cls.csv do not exist.*001.JPG"):
        build_dataset("visa", root, split="test")
    with pytest.raises(DatasetNotFoundError, match="2cls.csv not found"):
        build_dataset("visa", root, split="test", split_file="2cls.csv")


# --------------------------------------------------------------------------- GoodsAD


def test_goodsad(tmp_path):
    root = make_mvtec(
        tmp_path / "GoodsAD", categories=("drink_can", "food_box"), defects=("dent",), ext=".jpg", mask_suffix=""
    )
    ds = build_dataset("goodsad", root, split="test", categories=["drink_can"], image_size=224)
    assert ds.categories == ["drink_can"] and len(ds) == 4 and ds.labels.tolist() == [1, 1, 0, 0]
    assert ds[0]["image"].shape == (3, 224, 224) and ds[0]["mask"].sum() > 0


# --------------------------------------------------------------------------- AeBAD-S


def _make_aebad(root: Path) -> Path:
    s = root / "AeBAD_S"
    seed = 0
    for sub in ("background", "same"):
        for i in range(2):
            save_image(s / "train" / "good" / sub / f"{i}.png", (36, 30), seed := seed + 1)
    for domain in ("same", "background", "illumination", "view"):
        save_image(s / "test" / "good" / domain / "g0.png", (36, 30), seed := seed + 1)
        for i in range(2):
            save_image(s / "test" / "ablation" / domain / f"{domain}_{i}.png", (36, 30), seed := seed + 1)
            save_mask(s / "ground_truth" / "ablation" / domain / f"{domain}_{i}.png", (36, 30))
    return root


def test_aebad_domains(tmp_path):
    root = _make_aebad(tmp_path / "AeBAD")
    train = build_dataset("aebad", root, split="train", image_size=32, crop_size=28)
    assert len(train) == 4 and train.categories == ["AeBAD_S"] and train[0]["image"].shape == (3, 28, 28)
    view = build_dataset("aebad", root, split="test", domain="view", image_size=32, crop_size=28)
    assert len(view) == 3 and view.labels.tolist() == [1, 1, 0]
    assert {r.domain for r in view.records} == {"view"}
    assert all("/view/" in p for p in view.paths)
    assert view[0]["mask"].shape == (1, 28, 28) and view[0]["mask"].sum() > 0
    everything = build_dataset("aebad", root / "AeBAD_S", split="test", image_size=32)
    assert len(everything) == 12 and {r.domain for r in everything.records} == {
        "same",
        "background",
        "illumination",
        "view",
    }
    with pytest.raises(ValueError, match="domain='night'; expected one of same, background"):
        build_dataset("aebad", root, split="test", domain="night")
    with pytest.raises(ValueError, match="AeBAD-S option"):
        build_dataset("mvtec", root, split="test", domain="view")


def test_aebad_train_augmentation(tmp_path):
    root = _make_aebad(tmp_path / "AeBAD")
    ds = build_dataset("aebad", root, split="train", image_size=32, crop_size=24, augment=True)
    torch.manual_seed(3)
    a = ds[0]["image"]
    torch.manual_seed(3)
    b = ds[0]["image"]
    torch.manual_seed(4)
    c = ds[0]["image"]
    assert a.shape == (3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="training split"):
        build_dataset("aebad", root, split="test", augment=True)


# --------------------------------------------------------------------------- MAD


def _make_mad(root: Path, name: str) -> Path:
    base = root / name
    make_mvtec(base, categories=("01Gorilla", "02Unicorn"), defects=("Burrs", "Stains"), n_defect=1)
    (base / "01Gorilla" / "train" / "good" / "transforms.json").write_text("{}")  # MAD-Sim camera poses
    return base


def test_mad_sim_and_real(tmp_path):
    sim = _make_mad(tmp_path / "MAD", "MAD-Sim")
    _make_mad(tmp_path / "MAD", "MAD-Real")
    ds = build_dataset("mad", sim, split="train", image_size=16)
    assert ds.categories == ["01Gorilla", "02Unicorn"] and len(ds) == 6  # transforms.json ignored
    test = build_dataset("mad", tmp_path / "MAD", split="test", subset="real", categories=["02Unicorn"], image_size=16)
    assert len(test) == 4 and all("MAD-Real" in p for p in test.paths)
    with pytest.raises(DatasetError, match="both MAD-Sim and MAD-Real; pass subset="):
        build_dataset("mad", tmp_path / "MAD", split="test")


# --------------------------------------------------------------------------- Real-IAD


def _make_realiad(root: Path) -> Path:
    img_root = root / "realiad_512" / "audiojack"
    train, test = [], []
    for i in range(3):
        rel = f"OK/S000{i}/audiojack_000{i}_OK_C1_2023.jpg"
        save_image(img_root / rel, (32, 32), i)
        (train if i < 2 else test).append(
            {"category": "audiojack", "anomaly_class": "OK", "image_path": rel, "mask_path": None}
        )
    for i, cls in enumerate(("AK", "QS")):
        rel = f"NG/{cls}/S001{i}/audiojack_001{i}_NG_{cls}_C2_2023.jpg"
        save_image(img_root / rel, (32, 32), 10 + i)
        save_mask(img_root / rel.replace(".jpg", ".png"), (32, 32), box=(0, 0, 16, 32))
        test.append(
            {"category": "audiojack", "anomaly_class": cls, "image_path": rel, "mask_path": rel.replace(".jpg", ".png")}
        )
    write_json(
        root / "realiad_jsons" / "realiad_jsons" / "audiojack.json",
        {"meta": {"normal_class": "OK"}, "train": train, "test": test},
    )
    return root


def test_realiad_json_splits(tmp_path):
    root = _make_realiad(tmp_path / "Real-IAD")
    train = build_dataset("realiad", root, split="train", image_size=16)
    assert train.categories == ["audiojack"] and len(train) == 2 and train.labels.sum() == 0
    test = build_dataset("realiad", root, split="test", image_size=16)
    assert test.labels.tolist() == [0, 1, 1] and test.defect_types == ["good", "AK", "QS"]
    assert test[1]["mask"][0, :, :8].min() == 1 and test[1]["mask"][0, :, 8:].max() == 0
    with pytest.raises(DatasetNotFoundError, match="realiad_1024 does not exist; available resolutions: \\['512'\\]"):
        build_dataset("realiad", root, split="test", resolution=1024)


# --------------------------------------------------------------------------- your own folders


def test_folder_flat_train_masks_by_same_name(tmp_path):
    root = tmp_path / "my_parts"
    for i in range(3):
        save_image(root / "train" / f"ok_{i}.jpg", (40, 30), i)
    save_image(root / "test" / "good" / "t0.jpg", (40, 30), 5)
    save_image(root / "test" / "dent" / "d0.jpg", (40, 30), 6)
    save_image(root / "test" / "scratch" / "s0.jpg", (40, 30), 7)
    save_mask(root / "masks" / "dent" / "d0.png", (40, 30))
    save_mask(root / "test" / "scratch" / "s0_mask.png", (40, 30))  # next to its image
    train = build_dataset("folder", root, split="train", image_size=16)
    assert train.categories == ["my_parts"] and len(train) == 3
    test = build_dataset("folder", root, split="test", image_size=16)
    assert test.defect_types == ["dent", "good", "scratch"] and test.labels.tolist() == [1, 0, 1]
    assert test.records[0].mask_path.endswith("masks/dent/d0.png")
    assert test.records[2].mask_path.endswith("s0_mask.png") and len(test) == 3  # the mask is no test image
    named = build_dataset("folder", root, split="test", category="widget", image_size=16)
    assert named.categories == ["widget"]


def test_folder_mvtec_naming_and_no_masks(tmp_path):
    root = tmp_path / "parts"
    save_image(root / "train" / "good" / "a.png", (20, 20), 1)
    save_image(root / "test" / "crack" / "c.png", (20, 20), 2)
    save_image(root / "test" / "good" / "g.png", (20, 20), 3)
    ds = build_dataset("folder", root, split="test", image_size=16)
    assert ds.category_has_masks == {"parts": False} and ds.has_masks.tolist() == [False, True]
    save_mask(root / "ground_truth" / "crack" / "c_mask.png", (20, 20), box=(0, 0, 10, 20))
    ds = build_dataset("folder", root, split="test", image_size=16)
    assert ds.category_has_masks == {"parts": True} and ds[0]["mask"].sum() == 8 * 16


def test_folder_several_categories(tmp_path):
    for cat in ("alpha", "beta"):
        save_image(tmp_path / "mine" / cat / "train" / "x.png", (20, 20), 1)
    ds = build_dataset("folder", tmp_path / "mine", split="train", image_size=16)
    assert ds.categories == ["alpha", "beta"]


# --------------------------------------------------------------------------- unified


def test_unified_across_datasets_keeps_categories(tmp_path, mvtec_root):
    aebad = _make_aebad(tmp_path / "AeBAD")
    u = build_unified(
        [dict(format="aebad", root=aebad, image_size=32, crop_size=24), ("mvtec", mvtec_root, ["bottle"])],
        split="test",
        image_size=24,
    )
    assert u.categories == ["AeBAD_S", "bottle"] and len(u) == 12 + 6
    assert u[0]["category"] == "AeBAD_S" and u[len(u) - 1]["category"] == "bottle"
    assert {tuple(u[i]["image"].shape) for i in (0, 17)} == {(3, 24, 24)}
    assert u.labels.tolist()[-6:] == [1, 1, 0, 0, 1, 1]
    assert list(u.category_has_masks.values()) == [True, True]
    with pytest.raises(DatasetError, match="parts produce different image sizes"):
        build_unified(
            [dict(format="aebad", root=aebad, image_size=32), dict(format="mvtec", root=mvtec_root, image_size=24)],
            split="test",
        )


def test_unified_category_names_must_be_unique(tmp_path):
    a = make_mvtec(tmp_path / "a", categories=("bottle",))
    b = make_mvtec(tmp_path / "b", categories=("bottle",))
    with pytest.raises(DatasetError, match="category 'bottle' comes from both"):
        build_unified([("mvtec", a), ("goodsad", b)], split="train", image_size=16)
    u = build_unified([("mvtec", a), ("goodsad", b)], split="train", image_size=16, prefix_categories=True)
    assert u.categories == ["goodsad/bottle", "mvtec/bottle"]
    with pytest.raises(DatasetError, match="listed twice"):
        build_unified(
            [("mvtec", a, ["bottle"]), ("folder", a / "bottle", None)],
            split="train",
            image_size=16,
            prefix_categories=True,
        )
