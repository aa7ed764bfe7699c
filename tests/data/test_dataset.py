"""The dataset object: cache, workers, metadata without decoding, held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import minimaxad.data.base as base
from minimaxad.data import AnomalyDataset, Record, build_dataset, split_holdout

from .helpers import make_mvtec


@pytest.fixture
def bigger_root(tmp_path):
    return make_mvtec(tmp_path / "m", categories=("bottle", "cable", "screw"), n_train=10, size=(40, 40))


def test_cached_items_equal_uncached(mvtec_root):
    plain = build_dataset("mvtec", mvtec_root, split="test", image_size=24, crop_size=20)
    cached = build_dataset("mvtec", mvtec_root, split="test", image_size=24, crop_size=20, cache=True)
    assert cached.is_cached and not plain.is_cached
    assert cached.cache_nbytes() == 12 * 24 * 24 * 3 + 8 * 24 * 24
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["path"] == b["path"] and a["label"] == b["label"]


def test_dataloader_with_workers_and_cache(mvtec_root):
    ds = build_dataset("mvtec", mvtec_root, split="test", image_size=16, cache=True)
    batches = list(DataLoader(ds, batch_size=5, num_workers=2))
    images = torch.cat([b["image"] for b in batches])
    assert images.shape == (12, 3, 16, 16)
    assert torch.equal(images[7], ds[7]["image"])
    assert torch.cat([b["label"] for b in batches]).tolist() == ds.labels.tolist()
    assert sum((b["category"] for b in batches), []) == ds.item_categories
    assert torch.cat([b["has_mask"] for b in batches]).all()


def test_metadata_does_not_decode(mvtec_root, monkeypatch):
    ds = build_dataset("mvtec", mvtec_root, split="test", image_size=16)

    def boom(*args, **kwargs):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(base, "load_image_and_orientation", boom)
    assert ds.labels.tolist() == [1, 1, 0, 0, 1, 1] * 2
    assert ds.categories == ["bottle", "cable"] and ds.item_categories.count("cable") == 6
    assert ds.indices_of("cable").tolist() == list(range(6, 12))
    assert len(ds.records) == 12 and ds.records[0].defect_type == "crack"
    assert "bottle" in ds.summary() and ds.category_has_masks == {"bottle": True, "cable": True}


def test_split_holdout_per_category_seeded(bigger_root):
    ds = build_dataset("mvtec", bigger_root, split="train", image_size=16, cache=True)
    train, val = split_holdout(ds, 0.2, seed=111)
    assert len(train) == 24 and len(val) == 6
    assert sorted(val.item_categories) == ["bottle"] * 2 + ["cable"] * 2 + ["screw"] * 2
    assert not set(train.paths) & set(val.paths)
    again = split_holdout(ds, 0.2, seed=111)[1]
    other = split_holdout(ds, 0.2, seed=1)[1]
    assert again.paths == val.paths and other.paths != val.paths
    assert val.is_cached and torch.equal(val[0]["image"], ds[ds.paths.index(val.paths[0])]["image"])
    t3, v3 = split_holdout(ds, 3, seed=0)
    assert len(v3) == 9 and len(t3) == 21
    with pytest.raises(ValueError, match="category 'bottle' has 10 normal images; cannot hold out 10"):
        split_holdout(ds, 10)
    with pytest.raises(ValueError, match="fraction must be in"):
        split_holdout(ds, 1.5)


def test_with_augment_shares_items(bigger_root):
    ds = build_dataset("mvtec", bigger_root, split="train", image_size=20, crop_size=16, cache=True)
    aug = ds.with_augment(True)
    assert aug.augment is not None and ds.augment is None and aug.paths == ds.paths
    torch.manual_seed(0)
    x = aug[0]["image"]
    assert x.shape == (3, 16, 16) and not torch.equal(x, ds[0]["image"])


def test_cache_refuses_when_memory_is_short(mvtec_root, monkeypatch):
    monkeypatch.setattr(base, "_available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match=r"cache needs .* GiB .*use cache=False"):
        build_dataset("mvtec", mvtec_root, split="train", image_size=16, cache=True)


def test_dataset_from_records_directly(mvtec_root):
    recs = [
        Record(
            str(mvtec_root / "bottle/test/crack/000.png"),
            1,
            "bottle",
            "crack",
            str(mvtec_root / "bottle/ground_truth/crack/000_mask.png"),
        )
    ]
    ds = AnomalyDataset(recs, split="test", image_size=8)
    assert len(ds) == 1 and ds[-1]["mask"].sum() > 0
    with pytest.raises(IndexError, match="index 1 out of range for 1 items"):
        ds[1]
    assert "1 items" in repr(ds)


def test_labels_array_dtype(mvtec_root):
    ds = build_dataset("mvtec", mvtec_root, split="test", image_size=8)
    assert ds.labels.dtype == np.int64 and ds.has_masks.dtype == bool


def test_collate_and_make_loader(bigger_root):
    from minimaxad.data import collate, make_loader

    ds = build_dataset("mvtec", bigger_root, split="test", image_size=16, cache=True)
    batch = collate([ds[0], ds[3]])
    assert batch["image"].shape == (2, 3, 16, 16) and torch.equal(batch["image"][1], ds[3]["image"])
    assert batch["label"].dtype == torch.int64 and batch["has_mask"].dtype == torch.bool
    assert batch["category"] == ["bottle", "bottle"] and isinstance(batch["path"], list)
    orders = []
    for workers in (0, 2, 0):
        loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=workers, seed=111)
        orders.append(sum((b["path"] for b in loader), []))
    assert orders[0] == orders[1] == orders[2] and sorted(orders[0]) == sorted(ds.paths)
    assert orders[0] != ds.paths


def test_holdout_of_unified(bigger_root, mvtec_root):
    from minimaxad.data import build_unified

    u = build_unified(
        [("mvtec", bigger_root, ["screw"]), ("goodsad", mvtec_root)],
        split="train",
        image_size=16,
        prefix_categories=True,
    )
    train, val = split_holdout(u, 1, seed=0)
    assert sorted(val.item_categories) == ["goodsad/bottle", "goodsad/cable", "mvtec/screw"]
    assert len(train) + len(val) == len(u) == 16
    assert val[0]["image"].shape == (3, 16, 16)
