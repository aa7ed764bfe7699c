"""A nearest-neighbour memory-bank detector in the PatchCore style, for cost comparisons.

MiniMaxAD's cost per image is fixed by its network; a memory-bank detector compares every patch
of a test image with a bank that grows with the training set. This baseline uses features from
the same (frozen) UniRepLKNet encoder so that only the method differs:

* patch features: encoder levels 1 and 2 (1/8 and 1/16 of the image), each averaged over its
  3x3 neighbourhood, level 2 upsampled (bilinear) to level 1's grid, concatenated;
* memory bank: a greedy k-centre coreset of the training patches (PatchCore's algorithm, distances
  in a random 128-d projection), or a uniform random subset of the same size;
* test: exact nearest-neighbour distance of every patch to the bank (matrix products, chunked),
  map upsampled to the image and smoothed (Gaussian sigma 4), image score = the largest patch
  distance.

Shapes: images ``(B, 3, S, S)``; patch features ``(B, P, D)`` with ``P = (S/8)^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimaxad.models.encoder import UniRepLKNetEncoder


def patch_features(encoder: UniRepLKNetEncoder, images: torch.Tensor, levels: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """Locally aggregated patch features ``(B, P, D)`` on the grid of ``levels[0]``."""
    with torch.no_grad():
        features = encoder(images)
        chosen = [F.avg_pool2d(features[i], 3, stride=1, padding=1) for i in levels]
        size = chosen[0].shape[-2:]
        chosen = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in chosen
        ]
        stacked = torch.cat(chosen, dim=1)  # (B, D, h, w)
    return stacked.flatten(2).transpose(1, 2).contiguous()


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of ``count`` rows of ``features (M, D)`` chosen by greedy k-centre selection: each
    step adds the row farthest from those already chosen (Euclidean distance in a random
    ``projection_dim``-d projection, as PatchCore). Cost ``O(count * M * projection_dim)``."""
    m = features.shape[0]
    if not 0 < count <= m:
        raise ValueError(f"coreset size must be within 1..{m}, got {count}")
    g = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=g) / projection_dim**0.5
        points = features @ projection
    else:
        points = features
    # squared distances as |p|^2 - 2 p.c + |c|^2: one matrix-vector product per step
    sq_norms = points.pow(2).sum(1)
    chosen = torch.empty(count, dtype=torch.long)
    chosen[0] = int(torch.randint(m, (1,), generator=g))
    nearest = torch.full((m,), float("inf"), dtype=points.dtype)
    for i in range(count):
        if i:
            chosen[i] = int(nearest.argmax())
        centre = points[chosen[i]]
        distance = sq_norms - 2 * (points @ centre) + sq_norms[chosen[i]]
        nearest = torch.minimum(nearest, distance)
    return chosen


def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq_norms: torch.Tensor | None = None, chunk: int = 65536
) -> torch.Tensor:
    """Exact Euclidean distance of each query ``(Q, D)`` to its nearest bank row ``(M, D)``: ``(Q,)``.

    ``|q - b|^2 = |q|^2 - 2 q.b + |b|^2``, the bank in chunks so memory stays ``Q * chunk``."""
    if bank_sq_norms is None:
        bank_sq_norms = bank.pow(2).sum(1)
    q_sq = queries.pow(2).sum(1, keepdim=True)
    best = torch.full((queries.shape[0],), float("inf"), dtype=queries.dtype, device=queries.device)
    for start in range(0, bank.shape[0], chunk):
        part = bank[start : start + chunk]
        d2 = torch.addmm(bank_sq_norms[start : start + chunk].unsqueeze(0), queries, part.t(), beta=1, alpha=-2)
        best = torch.minimum(best, d2.amin(dim=1))
    return (best + q_sq.squeeze(1)).clamp_min(0).sqrt()


class MemoryBankDetector:
    """PatchCore-style detector: ``fit`` on training patch features, ``score`` test images.

    Args:
        encoder: the frozen UniRepLKNet encoder (same as MiniMaxAD's).
        coreset_ratio: bank size as a fraction of all training patches (PatchCore: 1% or 10%).
    """

    def __init__(self, encoder: UniRepLKNetEncoder, coreset_ratio: float = 0.01) -> None:
        self.encoder = encoder.eval()
        self.coreset_ratio = coreset_ratio
        self.bank: torch.Tensor | None = None
        self.bank_sq_norms: torch.Tensor | None = None

    def set_bank(self, bank: torch.Tensor) -> "MemoryBankDetector":
        self.bank = bank.contiguous()
        self.bank_sq_norms = self.bank.pow(2).sum(1)
        return self

    def fit(self, train_patches: torch.Tensor, method: str = "greedy", seed: int = 0) -> "MemoryBankDetector":
        """``train_patches (M, D)`` -> a bank of ``ceil(ratio * M)`` rows (``greedy`` or ``random``)."""
        count = max(1, int(round(self.coreset_ratio * train_patches.shape[0])))
        if method == "greedy":
            index = greedy_coreset(train_patches, count, seed=seed)
        elif method == "random":
            index = torch.randperm(train_patches.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
        else:
            raise ValueError(f"coreset method must be greedy or random, got {method!r}")
        return self.set_bank(train_patches[index])

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``(B, S, S)`` and image scores ``(B,)``."""
        if self.bank is None:
            raise RuntimeError("MemoryBankDetector.score before fit/set_bank")
        from minimaxad.anomaly_map import smooth_map

        patches = patch_features(self.encoder, images)
        b, p, _ = patches.shape
        side = int(round(p**0.5))
        distances = nearest_distances(patches.reshape(b * p, -1), self.bank, self.bank_sq_norms).reshape(
            b, 1, side, side
        )
        maps = F.interpolate(distances, size=images.shape[-2:], mode="bilinear", align_corners=False)
        maps = smooth_map(maps)[:, 0]
        return maps, distances.flatten(1).amax(dim=1)
