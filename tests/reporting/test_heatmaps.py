"""Tests for minimaxad.reporting.heatmaps (numpy + Pillow only)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from minimaxad.reporting.heatmaps import (
    COLORMAPS,
    colorize,
    contour_overlay,
    defect_mask,
    get_colormap,
    heatmap_overlay,
    resize_map,
    to_data_uri,
)


@pytest.fixture
def photo() -> Image.Image:
    """A 97x61 (W x H) photo: odd size, different aspect ratio from the 32x32 map."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8))


def _left_hot_map(n: int = 32) -> np.ndarray:
    m = np.zeros((n, n), np.float32)
    m[:, : n // 2] = 1.0
    return m


# --------------------------------------------------------------------------- colour maps


@pytest.mark.parametrize("name", ["jet", "viridis", "inferno", "gray"])
def test_luts_are_256x3_uint8(name: str) -> None:
    lut = COLORMAPS[name]
    assert lut.shape == (256, 3) and lut.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [
        ("jet", (0, 0, 128), (128, 0, 0)),  # matplotlib jet: dark blue -> dark red
        ("viridis", (68, 1, 84), (253, 231, 37)),
        ("inferno", (0, 0, 4), (252, 255, 164)),
        ("gray", (0, 0, 0), (255, 255, 255)),
    ],
)
def test_colorize_endpoints(name: str, lo: tuple, hi: tuple) -> None:
    m = np.array([[-5.0, 0.0, 0.5, 1.0, 7.0]], np.float32)
    rgb = colorize(m, 0.0, 1.0, cmap=name)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == lo and tuple(rgb[0, 1]) == lo  # below vmin clips to the first colour
    assert tuple(rgb[0, 3]) == hi and tuple(rgb[0, 4]) == hi  # above vmax clips to the last colour


def test_colormap_known_midpoints() -> None:
    # matplotlib values at 1/4, 1/2, 3/4 (within rounding)
    expected = {
        "viridis": [(59, 82, 139), (33, 145, 140), (94, 201, 98)],
        "inferno": [(87, 16, 110), (188, 55, 84), (249, 142, 9)],
        "jet": [(0, 128, 255), (124, 255, 121), (255, 148, 0)],
    }
    for name, cols in expected.items():
        got = get_colormap(name)[[64, 128, 192]].astype(int)
        assert np.abs(got - np.array(cols)).max() <= 3, (name, got.tolist())


@pytest.mark.parametrize("name", ["viridis", "inferno"])
def test_perceptual_maps_brighten_monotonically(name: str) -> None:
    lut = COLORMAPS[name].astype(float)
    luma = lut @ np.array([0.2126, 0.7152, 0.0722])
    assert np.diff(luma).min() >= -1.0


def test_colorize_nan_flat_and_reverse() -> None:
    m = np.array([[np.nan, 0.2], [0.2, 0.2]])
    rgb = colorize(m, 0.0, 1.0, "jet")
    assert tuple(rgb[0, 0]) == tuple(COLORMAPS["jet"][0])
    flat = colorize(np.full((4, 4), 3.0), 3.0, 3.0)  # vmax == vmin must not divide by zero
    assert flat.shape == (4, 4, 3)
    assert tuple(colorize(np.zeros((1, 1)), 0, 1, "jet_r")[0, 0]) == tuple(COLORMAPS["jet"][-1])
    auto = colorize(np.array([[1.0, 3.0]]))  # default range = min/max of the map
    assert tuple(auto[0, 0]) == tuple(COLORMAPS["jet"][0]) and tuple(auto[0, 1]) == tuple(COLORMAPS["jet"][-1])


def test_colorize_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown colour map"):
        colorize(np.zeros((2, 2)), 0, 1, cmap="rainbowz")
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 2)), 0, 1)


def test_custom_lut() -> None:
    lut = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    rgb = colorize(np.array([[0.0, 1.0]]), 0, 1, cmap=lut)
    assert rgb[0].tolist() == [[0, 0, 0], [255, 0, 0]]


# --------------------------------------------------------------------------- resizing, overlay


def test_resize_map_is_bilinear_and_sized() -> None:
    m = np.array([[0.0, 1.0]], np.float32)
    out = resize_map(m, (8, 3))
    assert out.shape == (3, 8) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out[0]) >= -1e-6)  # monotone ramp, not a step
    assert 0.05 < out[0, 3] < 0.95  # interpolated values in between


def test_overlay_has_photo_size(photo: Image.Image) -> None:
    m = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    out = heatmap_overlay(photo, m, 0.0, 1.0)
    assert out.size == (97, 61) and out.mode == "RGB"
    # grayscale / RGBA photos work too and keep their size
    assert heatmap_overlay(photo.convert("L"), m, 0, 1).size == (97, 61)
    assert heatmap_overlay(photo.convert("RGBA"), m, 0, 1, cmap="viridis").size == (97, 61)


def test_overlay_alpha_extremes(photo: Image.Image) -> None:
    m = _left_hot_map()
    assert np.array_equal(np.asarray(heatmap_overlay(photo, m, 0, 1, alpha=0.0)), np.asarray(photo))
    full = np.asarray(heatmap_overlay(photo, m, 0, 1, alpha=1.0))
    assert np.array_equal(full, colorize(resize_map(m, photo.size), 0, 1))
    with pytest.raises(ValueError):
        heatmap_overlay(photo, m, 0, 1, alpha=1.5)


def test_overlay_map_is_stretched_to_original_photo(photo: Image.Image) -> None:
    out = np.asarray(heatmap_overlay(photo, _left_hot_map(), 0, 1, alpha=1.0)).astype(int)
    # hot (dark red) on the left edge, cold (dark blue) on the right edge, over the full photo width
    assert out[:, 0, 0].min() > 100 and out[:, 0, 2].max() < 30
    assert out[:, -1, 2].min() > 100 and out[:, -1, 0].max() < 30


# --------------------------------------------------------------------------- masks


def test_defect_mask_values_and_size() -> None:
    m = _left_hot_map()
    mask = defect_mask(m, 0.5, size=(97, 61))
    assert mask.mode == "L" and mask.size == (97, 61)
    a = np.asarray(mask)
    assert set(np.unique(a).tolist()) == {0, 255}
    assert (a[:, :40] == 255).all() and (a[:, 58:] == 0).all()
    edge = int(np.argmax(a[30] == 0))  # bilinear resize then threshold: edge near the middle
    assert 44 <= edge <= 53


def test_defect_mask_threshold_semantics() -> None:
    m = np.array([[0.2, 0.5], [0.7, 0.9]], np.float32)
    assert np.asarray(defect_mask(m, 0.5)).tolist() == [[0, 255], [255, 255]]  # >= threshold
    assert np.asarray(defect_mask(m, 0.95)).max() == 0
    assert np.asarray(defect_mask(m, 0.0)).min() == 255
    assert defect_mask(m, 0.5).size == (2, 2)  # default: map size


def test_contour_overlay(photo: Image.Image) -> None:
    m = np.zeros((32, 32), np.float32)
    m[8:24, 8:24] = 1.0
    plain = Image.new("RGB", photo.size, (0, 0, 0))
    out = contour_overlay(plain, m, 0.5, color=(0, 255, 0), width=1)
    assert out.size == photo.size
    a = np.asarray(out)
    green = (a == [0, 255, 0]).all(axis=-1)
    assert green.any()
    assert not green[0].any() and not green[:, 0].any()  # nothing outside the region
    assert not green[30, 48]  # interior untouched
    thick = (np.asarray(contour_overlay(plain, m, 0.5, color=(0, 255, 0), width=3)) == [0, 255, 0]).all(-1)
    assert thick.sum() > green.sum()


# --------------------------------------------------------------------------- data URIs


def _decode(uri: str) -> Image.Image:
    header, b64 = uri.split(",", 1)
    assert header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_data_uri_png_round_trip(photo: Image.Image) -> None:
    uri = to_data_uri(photo)
    assert uri.startswith("data:image/png;base64,")
    back = _decode(uri)
    assert back.format == "PNG" and np.array_equal(np.asarray(back.convert("RGB")), np.asarray(photo))


def test_data_uri_jpeg_and_max_side(photo: Image.Image) -> None:
    uri = to_data_uri(photo.convert("RGBA"), format="JPEG", max_side=40)
    assert uri.startswith("data:image/jpeg;base64,")
    back = _decode(uri)
    assert back.format == "JPEG" and max(back.size) == 40
    assert abs(back.size[0] / back.size[1] - 97 / 61) < 0.1  # aspect ratio kept
    assert _decode(to_data_uri(photo, max_side=1000)).size == photo.size  # never enlarged
    assert photo.size == (97, 61)  # input untouched
    with pytest.raises(ValueError):
        to_data_uri(photo, format="GIF")
