"""Running a trained model over images or a dataset: anomaly maps and image scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from minimaxad.anomaly_map import anomaly_map, image_score
from minimaxad.data.loader import collate
from minimaxad.models import MiniMaxAD
from minimaxad.tiling import TiledPhoto, Tiling, run_tiled


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but PyTorch sees no CUDA device; use --device cpu")
    return device


@torch.inference_mode()
def infer_batch(model: MiniMaxAD, images: torch.Tensor, top_ratio: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation maps ``(B, H, W)`` and image scores ``(B,)`` for a normalised batch."""
    encoder_features, decoder_features = model(images)
    size = images.shape[-2:]
    maps = anomaly_map(encoder_features, decoder_features, image_size=(int(size[0]), int(size[1])))
    return maps[:, 0], image_score(maps, top_ratio)


@dataclass
class DatasetOutputs:
    """Per-item results of a model over a dataset (CPU tensors / arrays, in dataset order)."""

    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int
    categories: list[str]
    paths: list[str]
    maps: torch.Tensor  # (N, H, W) float32
    masks: torch.Tensor | None  # (N, H, W) bool, None when collect_masks=False
    has_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,)
    # the maps of a protocol whose evaluation uses another map than the common one (AeBAD-S:
    # sum of levels + scipy's Gaussian); the metrics read these, thresholds and reports ``maps``
    protocol_maps: torch.Tensor | None = None  # (N, H, W), float64 for the scipy smoothing
    # tiled photos of different sizes: each map (and mask) fills the top-left (height, width) of
    # its padded (H, W) slot; None when every map fills its slot
    sizes: np.ndarray | None = None  # (N, 2) int64

    @property
    def valid(self) -> torch.Tensor | None:
        """``(N, H, W)`` bool: the pixels that belong to each map (None: all of them)."""
        if self.sizes is None:
            return None
        rows = torch.arange(self.maps.shape[-2])[None, :, None] < torch.from_numpy(self.sizes[:, 0])[:, None, None]
        cols = torch.arange(self.maps.shape[-1])[None, None, :] < torch.from_numpy(self.sizes[:, 1])[:, None, None]
        return rows & cols

    def map(self, index: int) -> torch.Tensor:
        """Item ``index``'s map at its own size ``(h, w)`` (a view)."""
        if self.sizes is None:
            return self.maps[index]
        height, width = (int(v) for v in self.sizes[index])
        return self.maps[index, :height, :width]

    def map_list(self) -> torch.Tensor | list[torch.Tensor]:
        """All maps: the ``(N, H, W)`` stack, or a list of ``(h, w)`` views when their sizes differ."""
        return self.maps if self.sizes is None else [self.map(i) for i in range(len(self.scores))]

    def select(self, indices: Iterable[int]) -> "DatasetOutputs":
        """The items at ``indices``, in that order, as a new :class:`DatasetOutputs` (copies)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        t = torch.from_numpy(idx)
        return DatasetOutputs(
            self.scores[idx],
            self.labels[idx],
            [self.categories[i] for i in idx],
            [self.paths[i] for i in idx],
            self.maps[t],
            None if self.masks is None else self.masks[t],
            self.has_mask[idx] if len(self.has_mask) else self.has_mask,
            None if self.protocol_maps is None else self.protocol_maps[t],
            None if self.sizes is None else self.sizes[idx],
        )


def run_dataset(
    model: MiniMaxAD,
    dataset: Dataset,
    *,
    top_ratio: float = 0.01,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    workers: int = 0,
    collect_masks: bool = True,
    progress: bool = False,
    description: str = "test",
    protocol_map: tuple[str, str] | None = None,
    tiling: Tiling | None = None,
) -> DatasetOutputs:
    """Run ``model`` over every item; maps are kept once, as float32 on the CPU.

    With ``tiling`` each photo is cut into tiles (``batch_size`` counts tiles), and its map is
    stitched at the photo's (resized) resolution: see :func:`run_tiled_dataset`.

    ``protocol_map = (merge, smoothing)`` (see :func:`~minimaxad.anomaly_map.anomaly_map`) also
    keeps, from the same features, the map a protocol's metrics use under ``protocol_maps``
    (the AeBAD-S script's: ``("sum", "scipy-gaussian-sigma4-reflect")``).

    A training-form model is scored through a re-parameterized copy: same maps (to float
    rounding), 1.2-1.4x faster, and the same form ``predict`` uses, so thresholds calibrated
    here apply there exactly.
    """
    device = resolve_device(device)
    if not model.reparameterized:
        import copy

        model = copy.deepcopy(model).reparameterize()
    model.eval().to(device)
    if tiling is not None:
        if protocol_map is not None:
            raise ValueError("tiling is not part of the paper protocols: evaluate their presets without --tile-size")
        return run_tiled_dataset(
            model,
            dataset,
            tiling,
            top_ratio=top_ratio,
            batch_size=batch_size,
            device=device,
            workers=workers,
            collect_masks=collect_masks,
            progress=progress,
            description=description,
        )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        collate_fn=collate,
    )
    n = len(dataset)
    maps_out: torch.Tensor | None = None
    masks_out: torch.Tensor | None = None
    scores = np.zeros(n, dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    categories: list[str] = []
    paths: list[str] = []
    has_mask = np.zeros(n, dtype=bool)
    iterator = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc=description, unit="batch", leave=False)
    start = 0
    protocol_out: torch.Tensor | None = None
    for batch in iterator:
        images = batch["image"].to(device, non_blocking=True)
        if protocol_map is None:
            maps, batch_scores = infer_batch(model, images, top_ratio)
            other = None
        else:
            maps, batch_scores, other = _infer_with_protocol_map(model, images, top_ratio, *protocol_map)
        b = images.shape[0]
        if maps_out is None:  # allocate once: the only float copy of the pixel scores
            maps_out = torch.empty((n, *maps.shape[-2:]), dtype=torch.float32)
            if collect_masks:
                masks_out = torch.zeros((n, *maps.shape[-2:]), dtype=torch.bool)
            if other is not None:  # float64, as the script's scipy filter gives: exact AUPRO thresholds
                protocol_out = torch.empty((n, *maps.shape[-2:]), dtype=other.dtype)
        maps_out[start : start + b] = maps.float().cpu()
        if other is not None:
            protocol_out[start : start + b] = other
        scores[start : start + b] = batch_scores.float().cpu().numpy()
        labels[start : start + b] = torch.as_tensor(batch["label"]).numpy()
        if collect_masks and masks_out is not None:
            masks_out[start : start + b] = batch["mask"][:, 0] > 0.5
        if "has_mask" in batch:
            has_mask[start : start + b] = torch.as_tensor(batch["has_mask"]).numpy().astype(bool)
        categories.extend(batch["category"])
        paths.extend(batch["path"])
        start += b
    if maps_out is None:
        raise ValueError("the dataset is empty: nothing to evaluate")
    return DatasetOutputs(scores, labels, categories, paths, maps_out, masks_out, has_mask, protocol_out)


@torch.inference_mode()
def _infer_with_protocol_map(
    model: MiniMaxAD, images: torch.Tensor, top_ratio: float, merge: str, smoothing: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``infer_batch``'s maps and scores, plus the protocol's map ``(B, H, W)`` on the CPU."""
    encoder_features, decoder_features = model(images)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    maps = anomaly_map(encoder_features, decoder_features, image_size=size)
    other = anomaly_map(encoder_features, decoder_features, image_size=size, merge=merge, smoothing=smoothing)
    return maps[:, 0], image_score(maps, top_ratio), other[:, 0].cpu()


@torch.inference_mode()
def tile_maps(model: MiniMaxAD, tiles: torch.Tensor) -> torch.Tensor:
    """The unsmoothed evaluation maps ``(B, 1, s, s)`` of normalised tiles (what gets stitched)."""
    encoder_features, decoder_features = model(tiles)
    size = (int(tiles.shape[-2]), int(tiles.shape[-1]))
    return anomaly_map(encoder_features, decoder_features, image_size=size, smooth=False)


def run_tiled_dataset(
    model: MiniMaxAD,
    dataset: Dataset,
    tiling: Tiling,
    *,
    top_ratio: float = 0.01,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    workers: int = 0,
    collect_masks: bool = True,
    progress: bool = False,
    description: str = "test",
) -> DatasetOutputs:
    """:func:`run_dataset` for tiled photos: maps at each photo's (resized) resolution, padded
    into one ``(N, H_max, W_max)`` stack with their ``sizes`` when the photos' sizes differ."""
    from minimaxad.data.tiles import TiledPhotoDataset, upright_size

    device = resolve_device(device)
    photos = TiledPhotoDataset(dataset, tiling)
    n = len(photos)
    if n == 0:
        raise ValueError("the dataset is empty: nothing to evaluate")
    # every photo's size from its header: the stack is allocated once
    sizes = np.asarray([tiling.photo_size(*upright_size(r.path))[::-1] for r in photos.records], dtype=np.int64)
    height, width = (int(v) for v in sizes.max(axis=0))
    maps_out = torch.zeros((n, height, width), dtype=torch.float32)
    masks_out = torch.zeros((n, height, width), dtype=torch.bool) if collect_masks else None
    scores = np.zeros(n, dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    has_mask = np.zeros(n, dtype=bool)
    categories: list[str] = []
    paths: list[str] = []
    loader = DataLoader(photos, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=False)
    items = (TiledPhoto(item["tiles"], item["boxes"], item["height"], item["width"], item) for item in loader)
    results = run_tiled(
        items,
        lambda tiles: tile_maps(model, tiles.to(device, non_blocking=True)),
        batch_size=batch_size,
        top_ratio=top_ratio,
        blend=tiling.blend,
    )
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=n, desc=description, unit="photo", leave=False)
    for index, result in enumerate(results):
        item = result.photo.payload
        h, w = result.photo.height, result.photo.width
        if (h, w) != tuple(sizes[index]):
            raise RuntimeError(
                f"{item['path']}: decoded as {w}x{h} but its header says {sizes[index][1]}x{sizes[index][0]}"
            )
        maps_out[index, :h, :w] = result.map.float().cpu()
        if masks_out is not None:
            masks_out[index, :h, :w] = item["mask"]
        scores[index] = result.score
        labels[index] = item["label"]
        has_mask[index] = item["has_mask"]
        categories.append(item["category"])
        paths.append(item["path"])
    uniform = bool((sizes == sizes[0]).all())
    return DatasetOutputs(
        scores, labels, categories, paths, maps_out, masks_out, has_mask, None, None if uniform else sizes
    )
