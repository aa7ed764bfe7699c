"""The synthetic generator: deterministic, varied, exact masks, readable as MVTec."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from minimaxad.data import build_dataset, generate_synthetic_dataset, render_sample
from minimaxad.data.synthetic import CATEGORIES, DEFECT_TYPES, generate_highres_dataset, render_highres_sample


def test_default_demo_set_builds_fast_and_reads_as_mvtec(tmp_path):
    t0 = time.perf_counter()
    root = generate_synthetic_dataset(tmp_path / "syn", n_train=8, n_test_good=4, n_test_defect=1, image_size=64)
    assert time.perf_counter() - t0 < 10
    test = build_dataset("mvtec", root, split="test", image_size=64)
    assert test.categories == sorted(CATEGORIES) and len(test) == 3 * (4 + len(DEFECT_TYPES))
    assert sorted(set(test.defect_types)) == sorted(DEFECT_TYPES + ("good",))
    assert test.category_has_masks == {c: True for c in CATEGORIES}
    train = build_dataset("mvtec", root, split="train", image_size=64)
    assert len(train) == 24 and train.labels.sum() == 0
    item = test[0]
    assert item["label"] == 1 and item["mask"].sum() > 0


def test_deterministic_for_a_seed(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", ("washer",), 2, 2, 1, 48, seed=5)
    b = generate_synthetic_dataset(tmp_path / "b", ("washer",), 2, 2, 1, 48, seed=5)
    c = generate_synthetic_dataset(tmp_path / "c", ("washer",), 2, 2, 1, 48, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 + 2 + 2 * len(DEFECT_TYPES)
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))
    assert not np.array_equal(np.asarray(Image.open(a / files[0])), np.asarray(Image.open(c / files[0])))
    # more images do not change the ones already there
    more = generate_synthetic_dataset(tmp_path / "d", ("washer",), 4, 3, 2, 48, seed=5)
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(more / rel)))


@pytest.mark.parametrize("category", CATEGORIES)
def test_mask_is_exactly_the_changed_pixels(category):
    for k, defect in enumerate(DEFECT_TYPES):
        image, mask = render_sample(category, seed=3, index=100 + k, defect=defect, image_size=64)
        clean, empty = render_sample(category, seed=3, index=100 + k, defect=None, image_size=64)
        assert empty.max() == 0 and image.dtype == np.uint8 and mask.shape == (64, 64)
        changed = np.any(image != clean, axis=-1)
        assert np.array_equal(mask > 0, changed) and set(np.unique(mask)) == {0, 255}
        assert 4 <= changed.sum() < 64 * 64 * 0.3  # a local defect, not the whole image


def test_normal_images_vary():
    imgs = [render_sample("washer", 0, i, None, 64, "train")[0].astype(np.float32) for i in range(6)]
    centroids = []
    for im in imgs:
        bright = im.mean(-1) > 100  # the metal part
        ys, xs = np.nonzero(bright)
        centroids.append((ys.mean(), xs.mean()))
    assert np.ptp([c[0] for c in centroids]) > 1.0 or np.ptp([c[1] for c in centroids]) > 1.0
    means = [im.mean() for im in imgs]
    assert np.ptp(means) > 3  # lighting varies
    assert min(np.abs(imgs[0] - im).mean() for im in imgs[1:]) > 3


def test_some_defects_are_subtle():
    contrasts = []
    for i in range(24):
        image, mask = render_sample("grain", 1, i, "color", 64)
        clean, _ = render_sample("grain", 1, i, None, 64)
        contrasts.append(np.abs(image.astype(int) - clean)[mask > 0].mean())
    assert min(contrasts) < 8 < max(contrasts)


def test_overwrite_protection(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "s", ("weave",), 1, 1, 0, 32)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_synthetic_dataset(root, ("weave",), 1, 1, 0, 32)
    generate_synthetic_dataset(root, ("weave",), 2, 1, 0, 32, overwrite=True)
    assert len(list((root / "weave/train/good").glob("*.png"))) == 2
    other = tmp_path / "s" / "grain"
    (other / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not written by generate_synthetic_dataset"):
        generate_synthetic_dataset(root, ("grain",), 1, 1, 0, 32, overwrite=True)
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        generate_synthetic_dataset(tmp_path / "x", ("marble",))


# --------------------------------------------------------------------------- large photos, small defects


def _extent(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    return int(max(np.ptp(ys), np.ptp(xs))) + 1


def test_highres_set_sizes_non_square_and_reads_as_mvtec(tmp_path):
    t0 = time.perf_counter()
    root = generate_highres_dataset(
        tmp_path / "hr", ("grain",), n_train=2, n_test_good=1, n_test_defect=1, image_size=(640, 480)
    )
    photos = 2 + 1 + len(DEFECT_TYPES)
    assert time.perf_counter() - t0 < 2.0 * photos  # about 0.1-0.2 s a photo; loose for a busy machine
    for path in root.rglob("*.png"):
        image = Image.open(path)
        assert image.size == (640, 480)  # (width, height): wider than high
        assert image.mode == ("L" if path.name.endswith("_mask.png") else "RGB")
    test = build_dataset("mvtec", root, split="test", image_size=64)
    assert test.categories == ["grain"] and len(test) == 1 + len(DEFECT_TYPES)
    assert test.category_has_masks == {"grain": True}
    marker = json.loads((root / "grain" / ".minimaxad_synthetic.json").read_text())
    assert marker["width"] == 640 and marker["height"] == 480 and marker["defect_size"] == [0.01, 0.03]
    square = render_highres_sample("washer", 0, 0, None, 512)[0]
    assert square.shape == (512, 512, 3) and square.dtype == np.uint8


@pytest.mark.parametrize("category", CATEGORIES)
def test_highres_defects_are_small_exact_and_in_the_requested_range(category):
    size = (768, 512)  # the range is relative to the longer side: 1-3% of 768 = 8-23 px
    low, high = 8, 23
    extents = []
    for k, defect in enumerate(DEFECT_TYPES):
        for index in (10_000 * (k + 1), 10_000 * (k + 1) + 1):
            image, mask = render_highres_sample(category, 4, index, defect, size)
            clean, empty = render_highres_sample(category, 4, index, None, size)
            assert image.shape == (512, 768, 3) and mask.shape == (512, 768) and empty.max() == 0
            changed = np.any(image != clean, axis=-1)
            assert np.array_equal(mask > 0, changed) and set(np.unique(mask)) == {0, 255}
            extent = _extent(changed)
            assert low <= extent <= high, (defect, index, extent)
            assert changed.sum() <= extent * extent  # a small local defect, not spread over the photo
            extents.append(extent)
    assert max(extents) - min(extents) >= 5  # drawn across the range, not one size
    # another range is kept as well, and a defect is found at 1024 px
    _, mask = render_highres_sample(category, 0, 1, "spot", 1024, defect_size=(0.04, 0.05))
    assert 41 <= _extent(mask > 0) <= 51


def test_highres_deterministic_for_a_seed(tmp_path):
    args = dict(categories=("weave",), n_train=1, n_test_good=1, n_test_defect=1, image_size=256, defects=("hole",))
    a = generate_highres_dataset(tmp_path / "a", seed=5, **args)
    b = generate_highres_dataset(tmp_path / "b", seed=5, **args)
    c = generate_highres_dataset(tmp_path / "c", seed=6, **args)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 4
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))
    assert not np.array_equal(np.asarray(Image.open(a / files[0])), np.asarray(Image.open(c / files[0])))
    more = generate_highres_dataset(tmp_path / "d", seed=5, **{**args, "n_train": 2, "n_test_defect": 2})
    for rel in files:  # more images do not change the ones already there
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(more / rel)))
    # its own random streams: not the small generator's photo at the same index, resized
    small = render_sample("weave", 5, 0, None, 256, "train")[0]
    assert not np.array_equal(small, np.asarray(Image.open(a / "weave/train/good/000.png")))


def test_highres_refuses_impossible_settings(tmp_path):
    with pytest.raises(ValueError, match="allows no defect"):
        render_highres_sample("grain", image_size=128, defect_size=(0.001, 0.005))
    with pytest.raises(ValueError, match="defect_size must be a range"):
        render_highres_sample("grain", defect_size=(0.03, 0.01))
    with pytest.raises(ValueError, match=">= 64"):
        render_highres_sample("grain", image_size=(512, 32))
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        generate_highres_dataset(tmp_path / "x", ("marble",))
    root = generate_highres_dataset(tmp_path / "s", ("weave",), 1, 0, 0, 128)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_highres_dataset(root, ("weave",), 1, 0, 0, 128)
    assert not (tmp_path / "s" / "grain").exists()
