"""Full-resolution tiling: cut a photo into tiles, stitch the tiles' anomaly maps back into one.

A 5-20 megapixel inspection photo resized to 256 px loses the defects that matter (a pinhole,
a hair-line scratch). With tiling the photo keeps its own resolution (after an optional resize
of its long side); it is cut into ``tile_size`` squares every ``tile_stride`` pixels, each tile
runs through the network at ``image_size``, and the tiles' *unsmoothed* maps are stitched into
one map at the photo's resolution (overlaps blended), which is then smoothed and scored exactly
as the method scores a map (:mod:`minimaxad.anomaly_map`).

Geometry: along each axis the tiles start at ``0, S, 2S, ...`` and the last one is shifted back
so that it ends at the photo's edge (no padding with invented content). An axis shorter than a
tile gets one tile spanning the whole axis, resized to ``image_size`` like every tile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from minimaxad.anomaly_map import image_score, smooth_map

BLENDS = ("mean", "distance")


@dataclass(frozen=True)
class TileBox:
    """One tile's place in the (resized) photo: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Tiling:
    """How photos are cut into tiles and how the tile maps are put back together.

    Args:
        tile_size: side of a tile, in pixels of the (resized) photo.
        tile_stride: pixels between tile starts; ``None`` = ``tile_size`` (no overlap).
        resize_long_side: resize each photo so that its longer side has this many pixels first
            (aspect ratio kept); ``None`` keeps the photo's own resolution.
        image_size: side of the network's input, each tile resized to it; ``None`` = ``tile_size``.
        blend: how overlapping tile maps are combined: ``mean`` (plain average) or ``distance``
            (each tile's pixels weighted by their distance to the tile's border, so that seams fade).
    """

    tile_size: int
    tile_stride: int | None = None
    resize_long_side: int | None = None
    image_size: int | None = None
    blend: str = "mean"

    def __post_init__(self) -> None:
        if int(self.tile_size) < 8:
            raise ValueError(f"--tile-size {self.tile_size}: a tile must be at least 8 pixels")
        stride = self.tile_size if self.tile_stride is None else int(self.tile_stride)
        if not 0 < stride <= self.tile_size:
            raise ValueError(
                f"--tile-stride {self.tile_stride}: must be between 1 and --tile-size {self.tile_size} "
                "(a larger stride would leave pixels without any tile)"
            )
        if self.resize_long_side is not None and int(self.resize_long_side) < 8:
            raise ValueError(f"--resize-long-side {self.resize_long_side}: must be at least 8 pixels")
        if self.blend not in BLENDS:
            raise ValueError(f"tile blend {self.blend!r}; expected one of {', '.join(BLENDS)}")
        object.__setattr__(self, "tile_size", int(self.tile_size))
        object.__setattr__(self, "tile_stride", stride)
        object.__setattr__(self, "image_size", int(self.image_size or self.tile_size))

    # -- geometry
    def photo_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of a photo after ``resize_long_side`` (unchanged without it)."""
        if self.resize_long_side is None:
            return int(width), int(height)
        scale = self.resize_long_side / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def boxes(self, height: int, width: int) -> list[TileBox]:
        """The tiles of a ``height x width`` (already resized) photo, row by row."""
        rows = axis_starts(height, self.tile_size, self.tile_stride)
        cols = axis_starts(width, self.tile_size, self.tile_stride)
        tile_h, tile_w = min(self.tile_size, height), min(self.tile_size, width)
        return [TileBox(top, left, tile_h, tile_w) for top in rows for left in cols]

    def count(self, width: int, height: int) -> int:
        """How many tiles a photo of this original size is cut into."""
        w, h = self.photo_size(width, height)
        return len(axis_starts(h, self.tile_size, self.tile_stride)) * len(
            axis_starts(w, self.tile_size, self.tile_stride)
        )

    def describe(self) -> str:
        """One line for logs and reports."""
        resize = f"long side resized to {self.resize_long_side} px, " if self.resize_long_side else "full resolution, "
        return (
            f"tiles of {self.tile_size} px every {self.tile_stride} px ({resize}network input {self.image_size} px, "
            f"{self.blend} blend)"
        )

    # -- storage (config.json, checkpoints, exported files' sidecars)
    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "Tiling | None":
        """The inverse of :meth:`to_dict`; ``None`` (a model without tiling) gives ``None``."""
        if not values:
            return None
        return cls(**values)


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride`` pixels, the last one shifted back to end at
    the edge; ``[0]`` when the axis is not longer than a tile."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_weights(height: int, width: int, blend: str, device=None) -> torch.Tensor:
    """``(height, width)`` blending weights of one tile: ones (``mean``), or 1 + the distance
    to the nearest border (``distance``), so that a pixel near a seam leans on the tile that
    sees it from further inside."""
    if blend == "mean":
        return torch.ones((height, width), device=device)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    dy = torch.minimum(rows, height - 1 - rows)[:, None]
    dx = torch.minimum(cols, width - 1 - cols)[None, :]
    return 1.0 + torch.minimum(dy, dx)


def stitch(
    tile_maps: torch.Tensor, boxes: Sequence[TileBox], height: int, width: int, blend: str = "mean"
) -> torch.Tensor:
    """One ``(height, width)`` map from tile maps ``(n, 1, s, s)`` (or ``(n, s, s)``) placed at
    ``boxes``; a tile map whose box is not ``s x s`` is resized to it (bilinear, align_corners as
    the method's upsampling). Overlapping pixels get the ``blend`` of the tiles covering them;
    without overlap each pixel is its tile's value, exactly."""
    maps = tile_maps if tile_maps.dim() == 3 else tile_maps[:, 0]
    if maps.shape[0] != len(boxes):
        raise ValueError(f"{maps.shape[0]} tile maps for {len(boxes)} tiles")
    total = torch.zeros((height, width), dtype=maps.dtype, device=maps.device)
    weight = torch.zeros((height, width), dtype=maps.dtype, device=maps.device)
    for tile_map, box in zip(maps, boxes):
        if tuple(tile_map.shape) != (box.height, box.width):
            tile_map = F.interpolate(
                tile_map[None, None], size=(box.height, box.width), mode="bilinear", align_corners=True
            )[0, 0]
        w = tile_weights(box.height, box.width, blend, device=maps.device).to(maps.dtype)
        total[box.top : box.top + box.height, box.left : box.left + box.width] += tile_map * w
        weight[box.top : box.top + box.height, box.left : box.left + box.width] += w
    if bool((weight == 0).any()):  # cannot happen with axis_starts' boxes: a guard for hand-made ones
        raise ValueError("the tiles leave pixels of the photo uncovered")
    return total / weight


@dataclass
class TiledPhoto:
    """A photo cut into network inputs: ``tiles (n, 3, s, s)`` normalised, their ``boxes``, and
    the (resized) photo's ``height x width``; ``payload`` is carried along for the caller."""

    tiles: torch.Tensor
    boxes: list[TileBox]
    height: int
    width: int
    payload: Any = None


@dataclass
class StitchedPhoto:
    """What :func:`run_tiled` gives per photo: the smoothed map ``(height, width)`` and the score."""

    photo: TiledPhoto
    map: torch.Tensor
    score: float


def finish_map(stitched: torch.Tensor, top_ratio: float) -> tuple[torch.Tensor, float]:
    """The method's last steps on a stitched ``(H, W)`` map: the 5x5 Gaussian, then the top-ratio score."""
    smoothed = smooth_map(stitched[None, None])
    return smoothed[0, 0], float(image_score(smoothed, top_ratio)[0])


def run_tiled(
    photos: Iterable[TiledPhoto],
    tile_maps: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    top_ratio: float = 0.01,
    blend: str = "mean",
) -> Iterator[StitchedPhoto]:
    """Run ``tile_maps`` (normalised tiles ``(b, 3, s, s)`` -> unsmoothed maps ``(b, 1, s, s)`` or
    ``(b, s, s)``) over the tiles of ``photos`` in batches of ``batch_size`` tiles (a batch may hold
    tiles of several photos, and a photo's tiles may span batches); yield each photo's stitched,
    smoothed map and score in input order as soon as its last tile has run."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}; expected at least 1 tile")
    pending: list[tuple[TiledPhoto, list[torch.Tensor]]] = []  # photos whose maps are incomplete
    queue: list[torch.Tensor] = []  # tiles waiting for a batch
    queued = 0

    def run_queue() -> None:
        nonlocal queue, queued
        batch = torch.cat(queue) if len(queue) > 1 else queue[0]
        queue, queued = [], 0
        maps = tile_maps(batch)
        maps = maps if maps.dim() == 3 else maps[:, 0]
        start = 0
        for photo, done in pending:
            missing = len(photo.boxes) - sum(len(m) for m in done)
            take = min(missing, maps.shape[0] - start)
            if take > 0:
                done.append(maps[start : start + take])
                start += take

    def completed() -> Iterator[StitchedPhoto]:
        while pending and sum(len(m) for m in pending[0][1]) == len(pending[0][0].boxes):
            photo, done = pending.pop(0)
            stitched = stitch(torch.cat(done), photo.boxes, photo.height, photo.width, blend)
            smoothed, score = finish_map(stitched.float(), top_ratio)
            yield StitchedPhoto(photo, smoothed, score)

    for photo in photos:
        pending.append((photo, []))
        tiles = photo.tiles
        while tiles.shape[0]:
            room = batch_size - queued
            queue.append(tiles[:room])
            queued += min(room, tiles.shape[0])
            tiles = tiles[room:]
            if queued == batch_size:
                run_queue()
                yield from completed()
    if queued:
        run_queue()
    yield from completed()
