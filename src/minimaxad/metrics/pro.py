"""Per-region overlap (PRO) metrics: the exact AUPRO and the authors' 200-threshold AUPRO.

Both average, over every connected ground-truth region of every image (8-connectivity,
like ``skimage.measure.label``'s default in 2-D), the fraction of the region's pixels
above a threshold, and plot it against the pixel false-positive rate.

The speed comes from never thresholding the maps: a pixel of region ``r`` counts for region
``r`` at every threshold below its score, so with the positives sorted once and the
negatives sorted once (see :mod:`.ranking`) both forms reduce to prefix sums over the
positive pixels, each weighted ``1 / (area(r) * n_regions)``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage

from ._inputs import ArrayLike, as_float, binarise_masks, maps_3d
from .ranking import PosTable, Ranked, pos_table, rank_scores

# 8-connectivity inside each image, none across images: the stack is labelled in one call
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True
_LABEL_CHUNK_PIXELS = 1 << 24  # int32 label buffer of 64 MiB per call


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected ground-truth regions of a bool mask stack.

    mask: (N, H, W) bool. Returns (region id of every positive pixel in C order, (P,) int64;
    area of every region, (R,) int64). Region ids are 0..R-1, numbered image by image.
    """
    n, h, w = mask.shape
    step = max(1, _LABEL_CHUNK_PIXELS // max(1, h * w))
    ids: list[np.ndarray] = []
    offset = 0
    for i in range(0, n, step):
        part = mask[i : i + step]
        if not part.any():
            continue
        lab, count = ndimage.label(part, structure=_STRUCTURE)
        ids.append(lab[part].astype(np.int64) + (offset - 1))
        offset += count
    region = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    return region, np.bincount(region, minlength=offset).astype(np.int64)


class PixelData:
    """Pixel scores split by the masks, sorted, with region weights: shared by all pixel metrics.

    Built once per ``evaluate`` call; holds one float copy of the pixel scores.
    """

    def __init__(
        self, anomaly_maps: ArrayLike, masks: ArrayLike, *, need_regions: bool = True, valid: ArrayLike | None = None
    ):
        maps = as_float(maps_3d(anomaly_maps, "anomaly_maps"))
        mask = binarise_masks(maps_3d(masks, "masks"))
        if mask.shape != maps.shape:
            raise ValueError(
                f"masks have shape {tuple(mask.shape)} but anomaly_maps {tuple(maps.shape)} "
                "(after dropping the channel axis); resize the masks to the map size "
                "(nearest, or bilinear then > 0.5) before evaluating"
            )
        mask = mask.to(maps.device)
        if valid is not None:
            # maps of photos of different sizes, padded into one stack: only their own pixels count
            valid = maps_3d(valid, "valid").to(device=maps.device, dtype=torch.bool)
            if valid.shape != maps.shape:
                raise ValueError(f"valid has shape {tuple(valid.shape)} but anomaly_maps {tuple(maps.shape)}")
            mask = mask & valid
        self.shape = tuple(maps.shape)
        self.dtype = maps.dtype
        self.device = maps.device
        self.weights: torch.Tensor | None = None
        self.n_regions = 0
        self._table: PosTable | None = None
        self.has_positive = bool(mask.any())
        self.has_negative = not bool(mask.all()) if valid is None else bool((valid & ~mask).any())
        if not (self.has_positive and self.has_negative):
            return  # pixel metrics undefined: skip the sort (callers check the flags)
        # positives keep their C order among the valid pixels, which is their order in the full
        # stack: the region ids below (labelled on the padded masks) line up with them
        scores, positive = (maps, mask) if valid is None else (maps[valid], mask[valid])
        self.ranked: Ranked = rank_scores(scores, positive, keep_order=need_regions, name="anomaly_maps")
        del scores, positive
        if need_regions:
            region, areas = label_regions(mask.cpu().numpy())
            self.n_regions = len(areas)
            region_t = torch.from_numpy(region).to(maps.device)[self.ranked.pos_order]
            areas_t = torch.from_numpy(areas).to(maps.device)
            # w_p = 1 / (area(r) * R): summing w over the pixels of a set gives the mean
            # over regions of the covered fraction of each region
            self.weights = 1.0 / (areas_t[region_t].double() * self.n_regions)

    @property
    def table(self) -> PosTable:
        """The :class:`PosTable` of the pixel scores, built on first use and kept."""
        if self._table is None:
            self._table = pos_table(self.ranked)
        return self._table


def _check_limit(limit: float) -> float:
    limit = float(limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"the FPR integration limit must be in (0, 1], got {limit}")
    return limit


def aupro_exact_from(data: PixelData, limit: float = 0.3) -> float:
    """Exact AUPRO (every distinct threshold, MVTec-AD evaluation code definition): area under
    the PRO(FPR) polyline from FPR 0 to ``limit``, the segment crossing ``limit`` linearly
    interpolated, divided by ``limit``.

    The polyline, followed from the highest threshold down, is horizontal across negative-only
    values (PRO constant), vertical across positive-only values, and a straight diagonal
    across a value shared by both; only the distinct positive values are needed.
    """
    limit = _check_limit(limit)
    r, t = data.ranked, data.table
    assert data.weights is not None
    n = float(r.n_neg)
    wg = torch.zeros(t.u.numel(), dtype=torch.float64, device=t.u.device).index_add_(0, t.inverse, data.weights)
    p_ge = torch.flip(torch.cumsum(torch.flip(wg, (0,)), 0), (0,))  # PRO at threshold u_k (>= u_k)
    p_gt = torch.cat([p_ge[1:], p_ge.new_zeros(1)])  # PRO just above u_k
    lt, le = t.lt.double(), t.le.double()
    c = limit * n  # the limit in "number of negatives above the threshold"
    # diagonal across u_k: negatives ranked (n - le, n - lt], PRO from p_gt to p_ge
    start = n - le
    length = le - lt
    ell = torch.clamp(torch.minimum(start + length, torch.full_like(start, c)) - start, min=0.0)
    slope = torch.where(length > 0, (p_ge - p_gt) / torch.clamp(length, min=1.0), torch.zeros_like(p_ge))
    area = (ell * (2 * p_gt + slope * ell) / 2).sum()
    # horizontal between u_k and u_{k+1} at PRO p_gt[k] = p_ge[k+1]: ranks (n - lt[k+1], n - le[k]]
    h_start = torch.cat([n - lt[1:], lt.new_full((1,), n)])  # top segment has PRO 0: no area
    h_end = n - le
    area += (p_gt * torch.clamp(torch.clamp(h_end, max=c) - h_start, min=0.0)).sum()
    # below the lowest positive value: PRO = p_ge[0] (= 1) for ranks (n - lt[0], n]
    area += p_ge[0] * max(0.0, c - (n - float(lt[0])))
    return float(area) / n / limit


def authors_thresholds(min_value: float, max_value: float, dtype: torch.dtype, num: int = 200) -> np.ndarray:
    """The threshold list of the authors' ``compute_pro`` (RD4AD / MiniMaxAD code), computed
    with the same numpy expressions: ``np.arange(min, max, (max - min) / num)`` with ``min`` and
    ``max`` numpy scalars of the maps' dtype. numpy gives a float64 array of 200 or 201 values
    (the count depends on rounding in ``arange``), exactly as in their loop."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    min_th, max_th = np_dtype(min_value), np_dtype(max_value)
    delta = (max_th - min_th) / num
    if not delta > 0:
        return np.zeros(0)
    return np.arange(min_th, max_th, delta)


def _round_down(th: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Largest value of the maps' dtype <= each threshold: for a float32 score ``s``,
    ``s > th`` (float64 comparison, as numpy>=2 does for ``amaps > th``) iff ``s > down(th)``,
    which lets the counting stay in the maps' dtype."""
    if dtype == torch.float64:
        return th.astype(np.float64)
    down = th.astype(np.float32)
    over = down.astype(np.float64) > th
    down[over] = np.nextafter(down[over], np.float32(-np.inf))
    return down


def aupro_200_from(
    data: PixelData, limit: float = 0.3, num_thresholds: int = 200, *, return_curve: bool = False
) -> float | tuple[float, dict[str, np.ndarray]]:
    """The authors' AUPRO: PRO and FPR (``score > th``) at their ~200 evenly spaced thresholds,
    points with FPR < ``limit`` kept, FPR divided by its maximum, trapezoid area as
    ``sklearn.metrics.auc``. NaN (with a RuntimeWarning) when fewer than two thresholds are
    left or their FPRs are all 0 (constant maps, or one extreme outlier): the authors' code
    raises or gives NaN there too. With ``return_curve`` returns (value, curve dict)."""
    limit = _check_limit(limit)
    r = data.ranked
    assert data.weights is not None
    lo, hi = r.min_max()
    th = authors_thresholds(lo, hi, data.dtype, num_thresholds)
    n_th = len(th)
    th_t = torch.from_numpy(_round_down(th, data.dtype)).to(r.pos.device)
    fp = r.n_neg - r.count_le(th_t) if n_th else torch.zeros(0, dtype=torch.int64)
    # each positive pixel is above the thresholds strictly below it: k of them
    k = torch.searchsorted(th_t, r.pos, right=False)
    wk = torch.bincount(k, weights=data.weights, minlength=n_th + 1)
    pro = torch.flip(torch.cumsum(torch.flip(wk, (0,)), 0), (0,))[1:]  # sum over k > t
    fpr = fp.double().cpu().numpy() / r.n_neg
    pro_np = pro.cpu().numpy()
    curve = {"fpr": fpr, "pro": pro_np, "thresholds": th}
    keep = fpr < limit
    value = math.nan
    if keep.sum() >= 2 and fpr[keep].max() > 0:
        x = fpr[keep] / fpr[keep].max()
        y = pro_np[keep]
        dx = np.diff(x)
        direction = -1.0 if np.any(dx < 0) and np.all(dx <= 0) else 1.0  # sklearn.metrics.auc
        value = float(direction * np.sum(dx * (y[1:] + y[:-1]) / 2))
    else:
        warnings.warn(
            f"aupro_200 is undefined here ({int(keep.sum())} of {n_th} thresholds with FPR < "
            f"{limit}, max FPR among them {fpr[keep].max() if keep.any() else 'n/a'}): "
            "the anomaly maps are constant or dominated by an outlier; reporting NaN "
            "(the exact aupro is still defined)",
            RuntimeWarning,
            stacklevel=3,
        )
    return (value, curve) if return_curve else value


def _pixel_data(anomaly_maps: ArrayLike, masks: ArrayLike) -> PixelData:
    data = PixelData(anomaly_maps, masks)
    if not data.has_positive:
        raise ValueError("masks contain no anomalous pixel: PRO is undefined without ground-truth regions")
    if not data.has_negative:
        raise ValueError("masks mark every pixel anomalous: the false-positive rate is undefined")
    return data


def aupro(anomaly_maps: ArrayLike, masks: ArrayLike, integration_limit: float = 0.3) -> float:
    """Exact AUPRO up to FPR ``integration_limit``, normalised to [0, 1].

    anomaly_maps: (N, H, W) or (N, 1, H, W) float; masks: same shape, binarised ``> 0.5``.
    """
    return aupro_exact_from(_pixel_data(anomaly_maps, masks), integration_limit)


def aupro_200(anomaly_maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """The authors' 200-threshold AUPRO (the paper's tables). Shapes as :func:`aupro`."""
    return aupro_200_from(_pixel_data(anomaly_maps, masks), fpr_limit, num_thresholds)


__all__ = ["aupro", "aupro_200", "label_regions", "PixelData"]
