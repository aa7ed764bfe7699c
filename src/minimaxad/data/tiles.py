"""Photos cut into tiles (see :mod:`minimaxad.tiling`): for evaluation one item per photo, for
training one item per tile.

Pixels are treated as the whole-photo path treats them: PIL bilinear resizing (of the photo's
long side, and of a tile that is not ``image_size`` already), ``/ 255``, ImageNet mean and std,
masks resized bilinearly and binarised at 128.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from minimaxad.data.base import AnomalyDataset
from minimaxad.tiling import TileBox, TiledPhoto, Tiling

__all__ = ["PhotoTiler", "TiledPhotoDataset", "TrainingTiles", "upright_size"]

#: photos whose tiles are shuffled together in a training epoch (each decoded once per epoch)
PHOTO_GROUP = 16


def upright_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`~minimaxad.data.io.load_image` returns it
    (EXIF rotations of 90 degrees swap the sides), from its header only."""
    with Image.open(path) as im:
        width, height = im.size
        orientation = im.getexif().get(274, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


class PhotoTiler:
    """Cuts RGB photos into normalised tiles for :class:`~minimaxad.tiling.Tiling`.

    ``tiler.cut(photo)`` -> :class:`~minimaxad.tiling.TiledPhoto` with ``tiles (n, 3, s, s)``
    float32; ``tiler.mask(mask, size)`` -> the ground truth ``(H, W)`` bool at the resized photo's size.
    """

    def __init__(
        self,
        tiling: Tiling,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ) -> None:
        self.tiling = tiling
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def resized(self, photo: Image.Image) -> Image.Image:
        """The RGB photo at the resolution it is tiled at (``resize_long_side``, PIL bilinear)."""
        photo = photo.convert("RGB")
        size = self.tiling.photo_size(*photo.size)
        return photo if size == photo.size else photo.resize(size, Image.BILINEAR)

    def crops(self, array: np.ndarray, boxes: list[TileBox]) -> np.ndarray:
        """``(n, s, s, 3)`` uint8 tiles of an ``(H, W, 3)`` photo, each resized to ``image_size`` if needed."""
        side = self.tiling.image_size
        out = np.empty((len(boxes), side, side, 3), dtype=np.uint8)
        for i, box in enumerate(boxes):
            crop = array[box.top : box.top + box.height, box.left : box.left + box.width]
            if crop.shape[:2] != (side, side):
                crop = np.asarray(Image.fromarray(crop).resize((side, side), Image.BILINEAR))
            out[i] = crop
        return out

    def normalise(self, tiles: np.ndarray) -> torch.Tensor:
        """``(n, s, s, 3)`` uint8 -> ``(n, 3, s, s)`` float32, with the whole-photo path's float32
        arithmetic (``x / 255``, ``- mean``, ``/ std``), so that a tile equals the same pixels there."""
        a = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32)
        a /= np.float32(255.0)
        a -= self.mean[None, :, None, None]
        a /= self.std[None, :, None, None]
        return torch.from_numpy(a)

    def cut(self, photo: Image.Image, payload: Any = None) -> TiledPhoto:
        """Every tile of ``photo`` (a PIL image), normalised, with their boxes."""
        array = np.asarray(self.resized(photo))
        height, width = array.shape[:2]
        boxes = self.tiling.boxes(height, width)
        return TiledPhoto(self.normalise(self.crops(array, boxes)), boxes, height, width, payload)

    def mask(self, mask: Optional[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """The ``(H, W)`` bool ground truth at the resized photo's ``size = (width, height)``
        (bilinear, then ``>= 128`` as the whole-photo path binarises); all False without a mask."""
        width, height = size
        if mask is None:
            return torch.zeros((height, width), dtype=torch.bool)
        if mask.shape != (height, width):
            mask = np.asarray(Image.fromarray(mask, "L").resize((width, height), Image.BILINEAR))
        return torch.from_numpy(np.asarray(mask) >= 128)


class TiledPhotoDataset(Dataset):
    """The photos of ``dataset`` (an :class:`~minimaxad.data.base.AnomalyDataset`), one item each:
    ``tiles (n, 3, s, s)``, ``boxes``, ``height``/``width`` of the resized photo, its ``mask``
    ``(H, W)`` bool, and the usual ``label``, ``category``, ``path``, ``defect_type``, ``has_mask``."""

    def __init__(self, dataset: AnomalyDataset, tiling: Tiling) -> None:
        if not isinstance(dataset, AnomalyDataset):
            raise TypeError(f"tiling needs the photos of one dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.tiler = PhotoTiler(tiling, tuple(dataset.transform.mean), tuple(dataset.transform.std))

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def records(self):
        """The photos' records (see :class:`~minimaxad.data.base.Record`)."""
        return self.dataset.records

    def __getitem__(self, index: int) -> dict:
        record = self.dataset.records[index]
        photo, mask = self.dataset.decode(index)
        tiled = self.tiler.cut(photo)
        return {
            "tiles": tiled.tiles,
            "boxes": tiled.boxes,
            "height": tiled.height,
            "width": tiled.width,
            "mask": self.tiler.mask(mask, (tiled.width, tiled.height)),
            "label": int(record.label),
            "category": record.category,
            "path": record.path,
            "defect_type": record.defect_type,
            "has_mask": record.has_mask,
        }


class TrainingTiles(Dataset):
    """Every tile of every training photo as one training item (same keys as a photo dataset's
    items: ``image (3, s, s)``, an empty ``mask``, ``label`` 0, ``category``, ``path``...).

    Decoded photos are kept in a small in-memory cache (all of them with ``cache_all``): an
    epoch visits the photos in groups of :data:`PHOTO_GROUP` (:meth:`epoch_order`), so each is
    decoded about once per epoch. Augmentation (the dataset's ``augment``) is applied to each tile.
    """

    def __init__(self, dataset: AnomalyDataset, tiling: Tiling, *, cache_all: bool = False) -> None:
        if not isinstance(dataset, AnomalyDataset):
            raise TypeError(f"tiling needs the photos of one dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.tiling = tiling
        self.tiler = PhotoTiler(tiling, tuple(dataset.transform.mean), tuple(dataset.transform.std))
        self.augment = dataset.augment
        self.items: list[tuple[int, TileBox]] = []
        self.photo_items: list[list[int]] = []  # photo -> its item indices
        for photo, record in enumerate(dataset.records):
            width, height = tiling.photo_size(*upright_size(record.path))
            boxes = tiling.boxes(height, width)
            self.photo_items.append(list(range(len(self.items), len(self.items) + len(boxes))))
            self.items.extend((photo, box) for box in boxes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = len(dataset) if cache_all else PHOTO_GROUP + 1

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[str]:
        """The training photos' paths (what a resumed run checks it trains on)."""
        return self.dataset.paths

    def epoch_order(self, generator: torch.Generator) -> list[int]:
        """One epoch's order of all tiles: the photos shuffled, then the tiles of each group of
        :data:`PHOTO_GROUP` consecutive photos shuffled together (draws from ``generator`` only)."""
        photos = torch.randperm(len(self.photo_items), generator=generator).tolist()
        order: list[int] = []
        for start in range(0, len(photos), PHOTO_GROUP):
            group = [i for p in photos[start : start + PHOTO_GROUP] for i in self.photo_items[p]]
            order.extend(group[j] for j in torch.randperm(len(group), generator=generator).tolist())
        return order

    def _photo(self, photo: int) -> np.ndarray:
        if photo in self._cache:
            self._cache.move_to_end(photo)
            return self._cache[photo]
        image, _ = self.dataset.decode(photo)
        array = np.asarray(self.tiler.resized(image))
        self._cache[photo] = array
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return array

    def __getitem__(self, index: int) -> dict:
        photo, box = self.items[index]
        record = self.dataset.records[photo]
        crop = self.tiler.crops(self._photo(photo), [box])
        if self.augment is not None:
            tile, _ = self.augment(Image.fromarray(crop[0]), None)
            crop = np.asarray(tile.convert("RGB"))[None]
        image = self.tiler.normalise(crop)[0]
        side = image.shape[-1]
        return {
            "image": image,
            "mask": torch.from_numpy(np.zeros((1, side, side), np.float32)),
            "label": 0,
            "category": record.category,
            "path": record.path,
            "defect_type": record.defect_type,
            "has_mask": True,
        }
