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
) -> DatasetOutputs:
    """Run ``model`` over every item; maps are kept once, as float32 on the CPU.

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
