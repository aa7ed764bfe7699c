"""Tile geometry, stitching and batching of tiled photos (minimaxad/tiling.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaxad.anomaly_map import image_score, smooth_map
from minimaxad.tiling import TiledPhoto, Tiling, axis_starts, finish_map, run_tiled, stitch


def coverage(tiling: Tiling, height: int, width: int) -> torch.Tensor:
    counts = torch.zeros((height, width), dtype=torch.int64)
    for box in tiling.boxes(height, width):
        counts[box.top : box.top + box.height, box.left : box.left + box.width] += 1
    return counts


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 400), tile=st.integers(8, 128), stride_fraction=st.floats(0.05, 1.0))
def test_axis_starts_cover_every_pixel_and_stay_inside(length, tile, stride_fraction):
    stride = max(1, int(tile * stride_fraction))
    starts = axis_starts(length, tile, stride)
    extent = min(tile, length)
    assert starts[0] == 0
    assert starts[-1] + extent == length  # the last tile ends at the edge: shifted inside, never padded
    assert all(0 <= s <= length - extent for s in starts)
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gap between tiles


@pytest.mark.parametrize(
    "height, width, tile, stride",
    [(100, 100, 32, 32), (97, 131, 32, 32), (97, 131, 32, 20), (20, 131, 32, 16), (31, 17, 32, 32), (64, 64, 64, 64)],
)
def test_tiles_cover_every_pixel_once_or_more(height, width, tile, stride):
    tiling = Tiling(tile, stride)
    counts = coverage(tiling, height, width)
    assert int(counts.min()) >= 1
    if stride == tile and height % tile == 0 and width % tile == 0:
        assert int(counts.max()) == 1  # sizes that divide: each pixel exactly once
    for box in tiling.boxes(height, width):
        assert box.height == min(tile, height) and box.width == min(tile, width)


def test_photo_smaller_than_a_tile_is_one_tile_of_the_whole_photo():
    boxes = Tiling(64).boxes(40, 50)
    assert [(b.top, b.left, b.height, b.width) for b in boxes] == [(0, 0, 40, 50)]
    # only one axis shorter: that axis is spanned whole, the other tiled
    boxes = Tiling(64).boxes(40, 150)
    assert [(b.left, b.height, b.width) for b in boxes] == [(0, 40, 64), (64, 40, 64), (86, 40, 64)]


def test_resize_long_side_keeps_the_aspect_ratio():
    tiling = Tiling(64, resize_long_side=512)
    assert tiling.photo_size(2048, 1536) == (512, 384)
    assert tiling.photo_size(1000, 3000) == (171, 512)
    assert Tiling(64).photo_size(2048, 1536) == (2048, 1536)
    assert tiling.count(2048, 1536) == 8 * 6


def test_settings_are_checked_and_round_trip():
    tiling = Tiling(128, 96, 1024, None, "distance")
    assert tiling.image_size == 128 and tiling.tile_stride == 96
    assert Tiling.from_dict(tiling.to_dict()) == tiling
    assert Tiling.from_dict(None) is None
    with pytest.raises(ValueError, match="--tile-stride 200"):
        Tiling(128, 200)
    with pytest.raises(ValueError, match="--tile-size 4"):
        Tiling(4)
    with pytest.raises(ValueError, match="blend"):
        Tiling(64, blend="max")


def test_stitching_without_overlap_is_each_tile_exactly():
    generator = torch.Generator().manual_seed(0)
    tiling = Tiling(32)
    boxes = tiling.boxes(96, 64)
    maps = torch.rand((len(boxes), 1, 32, 32), generator=generator)
    stitched = stitch(maps, boxes, 96, 64)
    for tile_map, box in zip(maps, boxes):
        region = stitched[box.top : box.top + box.height, box.left : box.left + box.width]
        assert torch.allclose(region, tile_map[0], atol=1e-6, rtol=0)
    # and the photo's map is that map, smoothed and scored like any map
    smoothed, score = finish_map(stitched, 0.01)
    assert torch.equal(smoothed, smooth_map(stitched[None, None])[0, 0])
    assert score == pytest.approx(float(image_score(smoothed[None], 0.01)[0]))


def test_stitching_blends_overlaps():
    tiling = Tiling(32, 16)
    boxes = tiling.boxes(32, 48)  # columns 0, 16: overlap on columns 16..31
    assert [b.left for b in boxes] == [0, 16]
    maps = torch.stack([torch.full((32, 32), 1.0), torch.full((32, 32), 3.0)])
    mean = stitch(maps, boxes, 32, 48, "mean")
    assert torch.all(mean[:, :16] == 1) and torch.all(mean[:, 16:32] == 2) and torch.all(mean[:, 32:] == 3)
    distance = stitch(maps, boxes, 32, 48, "distance")
    # inside the overlap, the tile whose centre is nearer weighs more; the values stay between the two
    assert torch.all((distance[:, 16:32] >= 1) & (distance[:, 16:32] <= 3))
    row = distance[16]
    assert row[17] < 2 < row[30]  # near the first tile's middle ~1, near the second's ~3
    assert torch.all(distance[:, :16] == 1) and torch.all(distance[:, 32:] == 3)


def test_a_tile_map_of_another_size_is_resized_to_its_box():
    tiling = Tiling(32, image_size=16)  # tiles run at 16 px: their maps are 16 x 16
    boxes = tiling.boxes(32, 64)
    maps = torch.stack([torch.full((16, 16), 1.0), torch.full((16, 16), 2.0)])
    stitched = stitch(maps, boxes, 32, 64)
    assert stitched.shape == (32, 64)
    assert torch.allclose(stitched[:, :32], torch.ones(32, 32)) and torch.allclose(
        stitched[:, 32:], torch.full((32, 32), 2.0)
    )


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_run_tiled_gives_the_same_photos_whatever_the_batching(batch_size):
    generator = torch.Generator().manual_seed(1)
    tiling = Tiling(16, 12)
    photos = []
    for index, (height, width) in enumerate([(40, 40), (16, 16), (23, 57), (64, 30)]):
        boxes = tiling.boxes(height, width)
        photos.append(TiledPhoto(torch.rand((len(boxes), 3, 16, 16), generator=generator), boxes, height, width, index))
    calls = []

    def network(tiles: torch.Tensor) -> torch.Tensor:  # a map that depends on each tile's own pixels
        calls.append(tiles.shape[0])
        return tiles.mean(dim=1, keepdim=True) ** 2

    results = list(run_tiled(photos, network, batch_size=batch_size, top_ratio=0.01, blend="mean"))
    assert [r.photo.payload for r in results] == [0, 1, 2, 3]
    assert max(calls) <= batch_size and sum(calls) == sum(len(p.boxes) for p in photos)
    for photo, result in zip(photos, results):
        expected, score = finish_map(stitch(network(photo.tiles), photo.boxes, photo.height, photo.width), 0.01)
        assert result.map.shape == (photo.height, photo.width)
        assert torch.allclose(result.map, expected, atol=1e-6)
        assert result.score == pytest.approx(score, abs=1e-6)
