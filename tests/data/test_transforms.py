"""The authors' transforms: resize, crop, ImageNet normalisation, mask binarisation, AeBAD-S augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minimaxad.data import IMAGENET_MEAN, IMAGENET_STD, RandomResizedCropFlip, Transform, denormalize
from minimaxad.data.transforms import center_crop_box

from .helpers import photo


def test_resize_is_pil_bilinear_and_normalise_is_imagenet():
    src = Image.fromarray(photo((90, 70), 1))
    out = Transform(32)(src)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    ref = np.asarray(src.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    assert torch.allclose(out, torch.from_numpy(ref).permute(2, 0, 1), atol=1e-6)


def test_center_crop_matches_torchvision_rounding():
    assert center_crop_box(256, 256, (224, 224)) == (16, 16)
    assert center_crop_box(33, 33, (30, 30)) == (2, 2)  # round(1.5) == 2 (half to even)
    assert center_crop_box(35, 35, (30, 30)) == (2, 2)  # round(2.5) == 2
    src = photo((40, 40), 2)
    t = Transform(40, 30)
    out = t(src)
    assert out.shape == (3, 30, 30)
    full = Transform(40)(src)
    assert torch.equal(out, full[:, 5:35, 5:35])
    with pytest.raises(ValueError, match="crop_size .* larger than image_size"):
        Transform(32, 40)


def test_rectangular_size():
    assert Transform((24, 40))(photo((50, 50), 0)).shape == (3, 24, 40)
    with pytest.raises(ValueError, match="image_size"):
        Transform(0)


def test_mask_binarised_at_half():
    # At the output size nothing is resampled: v / 255 > 0.5 <=> v >= 128.
    m = np.array([[0, 127], [128, 255]], np.uint8)
    assert Transform(2).mask(m)[0].tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_mask_resized_like_image_then_binarised():
    m = np.zeros((40, 40), np.uint8)
    m[10:23, 5:31] = 255
    out = Transform(16).mask(m)
    ref = np.asarray(Image.fromarray(m).resize((16, 16), Image.BILINEAR)) >= 128
    assert out.shape == (1, 16, 16) and out.dtype == torch.float32
    assert np.array_equal(out[0].numpy().astype(bool), ref)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    # A mask of another size than its image ends at the same output size.
    assert Transform(4).mask(np.full((3, 5), 255, np.uint8)).sum() == 16


def test_finish_without_mask_gives_zeros():
    image, mask = Transform(8).finish(np.zeros((8, 8, 3), np.uint8))
    assert mask.shape == (1, 8, 8) and mask.sum() == 0
    assert torch.allclose(image[:, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))


def test_denormalize_round_trip():
    src = photo((16, 16), 5)
    t = Transform(16)(src)
    assert np.array_equal(denormalize(t), src)
    assert denormalize(t[None].repeat(2, 1, 1, 1)).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="expected"):
        denormalize(torch.zeros(2, 16, 16))


def test_random_resized_crop_flip_is_seeded_and_in_range():
    aug = RandomResizedCropFlip(24, scale=(0.7, 1.0))
    img = Image.fromarray(photo((64, 48), 3))
    torch.manual_seed(7)
    a, _ = aug(img)
    torch.manual_seed(7)
    b, _ = aug(img)
    assert a.size == (24, 24) and np.array_equal(np.asarray(a), np.asarray(b))
    torch.manual_seed(0)
    areas, flips = [], 0
    for _ in range(200):
        top, left, h, w = aug.get_params(64, 48)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        areas.append(h * w / (64 * 48))
    assert 0.6 < min(areas) and max(areas) <= 1.0
    for _ in range(200):
        flips += float(torch.rand(1)) < 0.5
    assert 70 < flips < 130


def test_crop_flip_applies_same_geometry_to_mask():
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white
    m = Image.fromarray((arr[..., 0]).copy(), "L")
    aug = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    img, mask = aug(Image.fromarray(arr), m)
    img, mask = np.asarray(img), np.asarray(mask)
    assert img[:, :6].max() < 10 and img[:, -6:].min() > 245  # flipped: white on the right
    assert np.array_equal(mask >= 128, img[..., 0] >= 128)
