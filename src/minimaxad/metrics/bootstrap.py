"""Bootstrap confidence intervals for the image-level metrics (resampling images).

All replicates are computed at once on a (B, n) matrix in numpy: one stable sort per row,
then the same tie-aware formulas as :mod:`.ranking` (exact per replicate).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ._inputs import ArrayLike, binary_labels, check_both_classes, same_length, scores_1d

IMAGE_METRICS = ("auroc", "ap", "f1max")
_ROWS_PER_BATCH = 256


def batched_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AP and F1-max of every row.

    scores: (B, n) float; labels: (B, n) bool, each row with both classes. Returns (B,) arrays.
    """
    b, n = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, 1)
    y = np.take_along_axis(labels, order, 1)
    n_pos = y.sum(1)
    n_neg = n - n_pos
    tps = np.cumsum(y, 1, dtype=np.int64)
    idx = np.broadcast_to(np.arange(n), (b, n))
    fps = idx + 1 - tps
    end = np.ones((b, n), dtype=bool)  # last element of a run of tied scores
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    start = np.ones((b, n), dtype=bool)
    start[:, 1:] = end[:, :-1]
    # every element's group end / group start (ties form a group)
    g_end = np.minimum.accumulate(np.where(end, idx, n)[:, ::-1], 1)[:, ::-1]
    g_start = np.maximum.accumulate(np.where(start, idx, 0), 1)
    fps_end = np.take_along_axis(fps, g_end, 1)
    fps_before = np.where(g_start > 0, np.take_along_axis(fps, np.maximum(g_start - 1, 0), 1), 0)
    tps_end = np.take_along_axis(tps, g_end, 1)
    # AUROC: per positive, negatives below + half the tied ones
    auc = (y * ((n_neg[:, None] - fps_end) + 0.5 * (fps_end - fps_before))).sum(1) / (n_pos * n_neg)
    precision = tps_end / (g_end + 1)
    ap = (y * precision).sum(1) / n_pos
    f1 = (2 * tps_end / (g_end + 1 + n_pos[:, None])).max(1)
    return {"auroc": auc, "ap": ap, "f1max": f1}


def bootstrap_ci(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: Iterable[str] = IMAGE_METRICS,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of image-level AUROC, AP and F1-max.

    scores, labels: (n,). Each replicate resamples the images with replacement; with
    ``stratified`` (default) the normal and the anomalous images are resampled separately,
    keeping their counts, so every replicate has both classes and the same prevalence (AP and
    F1 depend on it). Without it, replicates lacking a class are redrawn. Seeded: the same
    ``seed`` gives the same intervals. Returns ``{"auroc": (lo, hi), "ap": ..., "f1max": ...}``.
    """
    metrics = tuple(metrics)
    unknown = set(metrics) - set(IMAGE_METRICS)
    if unknown:
        raise ValueError(f"unknown bootstrap metric(s) {sorted(unknown)}; choose from {IMAGE_METRICS}")
    if int(n_boot) < 2:
        raise ValueError(f"n_boot must be at least 2 (typically 1000), got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level}")
    s_t = scores_1d(scores, "image_scores")
    y_t = binary_labels(labels, "labels")
    same_length(s_t, y_t, "image_scores", "labels")
    check_both_classes(y_t, "bootstrap_ci")
    s = s_t.double().cpu().numpy()
    y = y_t.cpu().numpy()
    n = len(s)
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(y), np.flatnonzero(~y)
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    done = 0
    while done < n_boot:
        b = min(_ROWS_PER_BATCH, n_boot - done)
        if stratified:
            idx = np.concatenate([rng.choice(pos_idx, (b, len(pos_idx))), rng.choice(neg_idx, (b, len(neg_idx)))], 1)
        else:
            idx = rng.integers(0, n, (b, n))
            k = y[idx].sum(1)
            idx = idx[(k > 0) & (k < n)]  # a replicate needs both classes: drop and redraw
            if not len(idx):
                continue
        out = batched_metrics(s[idx], y[idx])
        for m in metrics:
            values[m].append(out[m])
        done += len(idx)
    alpha = (1.0 - level) / 2
    result = {}
    for m in metrics:
        v = np.concatenate(values[m])[:n_boot]
        lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
        result[m] = (float(lo), float(hi))
    return result
