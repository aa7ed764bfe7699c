"""Anomaly maps and image scores, as the authors compute them.

Per level ``M_k = 1 - cos(f_E^k, f_D^k)`` over channels. Training map: nearest upsampling,
sum over levels. Evaluation map: bilinear (align_corners) upsampling, mean over levels, then a
normalised 5x5 Gaussian (sigma 4) with zero padding. Everything is batched and runs on the
device of its inputs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def cosine_distance_maps(
    encoder_features: Sequence[torch.Tensor], decoder_features: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``1 - cos`` over channels for every level: list of ``(B, 1, H_k, W_k)``."""
    if len(encoder_features) != len(decoder_features):
        raise ValueError(f"got {len(encoder_features)} encoder and {len(decoder_features)} decoder levels")
    return [1 - F.cosine_similarity(e, d, dim=1).unsqueeze(1) for e, d in zip(encoder_features, decoder_features)]


def training_anomaly_map(
    encoder_features: Sequence[torch.Tensor], decoder_features: Sequence[torch.Tensor], image_size: int | Sequence[int]
) -> torch.Tensor:
    """The map the ADC loss is computed on: nearest upsampling, sum of levels, ``(B, H, W)``."""
    size = _size(image_size)
    maps = cosine_distance_maps(encoder_features, decoder_features)
    total = sum(F.interpolate(m, size=size, mode="nearest") for m in maps)
    return total.squeeze(1)


def gaussian_kernel(kernel_size: int = 5, sigma: float = 4.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 2-D Gaussian ``(1, 1, k, k)``."""
    coords = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    kernel = kernel / kernel.sum()
    return kernel.to(device=device, dtype=dtype).view(1, 1, kernel_size, kernel_size)


def smooth_map(maps: torch.Tensor, kernel_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """Gaussian smoothing with zero padding of ``(B, 1, H, W)`` maps (shape kept)."""
    kernel = gaussian_kernel(kernel_size, sigma, device=maps.device, dtype=maps.dtype)
    return F.conv2d(maps, kernel, padding=kernel_size // 2)


def smooth_map_reflect(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(map, sigma)`` of each ``(H, W)`` map of ``(B, 1, H, W)``
    (its defaults: truncate 4, i.e. 33 taps for sigma 4, mode 'reflect'), computed in float64 on
    the CPU as the AeBAD-S script does; returns float64 on the CPU."""
    from scipy.ndimage import gaussian_filter

    array = maps.detach().to("cpu", torch.float64).numpy()
    out = [gaussian_filter(item[0], sigma=sigma) for item in array]  # per image: no blur across the batch
    return torch.from_numpy(np.stack(out)[:, None]) if out else torch.zeros_like(maps, dtype=torch.float64)


def anomaly_map(
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
    image_size: int | Sequence[int],
    smooth: bool = True,
    kernel_size: int = 5,
    sigma: float = 4.0,
    merge: str = "mean",
    smoothing: str = "gaussian-5x5-zero-pad",
) -> torch.Tensor:
    """The evaluation map ``(B, 1, H, W)``: bilinear (align_corners) upsampling, ``merge`` of
    the levels ('mean', or 'sum' as the AeBAD-S script), then (``smooth=True``) ``smoothing``:
    the 5x5 sigma-4 Gaussian with zero padding (the common path), or
    'scipy-gaussian-sigma4-reflect' (:func:`smooth_map_reflect`, float64 on the CPU)."""
    if merge not in ("mean", "sum"):
        raise ValueError(f"merge={merge!r}; expected 'mean' or 'sum'")
    size = _size(image_size)
    maps = cosine_distance_maps(encoder_features, decoder_features)
    total = sum(F.interpolate(m, size=size, mode="bilinear", align_corners=True) for m in maps)
    merged = total / len(maps) if merge == "mean" else total
    if not smooth:
        return merged
    if smoothing == "gaussian-5x5-zero-pad":
        return smooth_map(merged, kernel_size, sigma)
    if smoothing == "scipy-gaussian-sigma4-reflect":
        return smooth_map_reflect(merged, sigma)
    raise ValueError(f"smoothing={smoothing!r}; expected 'gaussian-5x5-zero-pad' or 'scipy-gaussian-sigma4-reflect'")


def image_score(maps: torch.Tensor, top_ratio: float = 0.01) -> torch.Tensor:
    """Image anomaly score ``(B,)``: mean of the ``floor(H*W*top_ratio)`` highest pixels of each
    map (``(B, H, W)`` or ``(B, 1, H, W)``); ``top_ratio=0`` (or k < 1) gives the max pixel."""
    flat = maps.reshape(maps.shape[0], -1)
    k = math.floor(flat.shape[1] * top_ratio) if top_ratio > 0 else 0
    if k < 1:
        return flat.amax(dim=1)
    return flat.topk(k, dim=1).values.mean(dim=1)
