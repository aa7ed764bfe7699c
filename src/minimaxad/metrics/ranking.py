"""Exact ranking metrics (AUROC, average precision, F1-max) and their curves.

The pixel-level problem is large (MVTec AD: 113 M pixels) but the positives are few, so the
computation is organised around them:

* the negative scores are copied once and sorted in place (in as many chunks as there are
  CPU cores, sorted in parallel threads; the chunks are never merged because only *counts*
  of negatives below / equal to a value are needed, and those add up over chunks);
* the positive scores are sorted (they are a few per cent of the pixels);
* for every distinct positive value ``u`` the number of negatives ``< u`` and ``<= u`` comes
  from a binary search in each sorted chunk.

From these counts AUROC (Mann-Whitney with ties counted one half), average precision
(scikit-learn's step sum over distinct thresholds) and F1-max are exact: recall only changes
at positive values, and for a fixed number of true positives the F1 is largest at the highest
threshold giving it, so no negative-only threshold can beat the positive ones. Nothing is
binned. Counts are int64, sums float64.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ._inputs import ArrayLike, binary_labels, check_both_classes, same_length, scores_1d

# below this many negatives a single-threaded sort is faster than starting threads
_PARALLEL_SORT_MIN = 1 << 22


def _n_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _sort_chunks_inplace(arr: np.ndarray) -> list[np.ndarray]:
    """Sort ``arr`` in place as independent ascending chunks (numpy releases the GIL)."""
    n = _n_threads() if arr.size >= _PARALLEL_SORT_MIN else 1
    chunks = [c for c in np.array_split(arr, n) if c.size]
    if len(chunks) <= 1:
        arr.sort()
        return [arr]
    with ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(np.ndarray.sort, chunks))
    return chunks


@dataclass
class Ranked:
    """Scores split by class and sorted.

    neg: ascending sorted chunks of the negative scores (1-D, same dtype/device as ``pos``)
    pos: ascending sorted positive scores, shape (P,)
    pos_order: indices such that ``pos = positives_in_input_order[pos_order]`` (or None)
    """

    neg: list[torch.Tensor]
    pos: torch.Tensor
    pos_order: torch.Tensor | None
    n_neg: int
    n_pos: int

    def count_lt(self, x: torch.Tensor) -> torch.Tensor:
        """Number of negatives strictly below each value of ``x`` (int64, shape of x)."""
        out = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
        for c in self.neg:
            out += torch.searchsorted(c, x, right=False)
        return out

    def count_le(self, x: torch.Tensor) -> torch.Tensor:
        """Number of negatives below or equal to each value of ``x``."""
        out = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
        for c in self.neg:
            out += torch.searchsorted(c, x, right=True)
        return out

    def min_max(self) -> tuple[float, float]:
        """The lowest and highest of all the scores, as floats: the range of the authors' AUPRO thresholds."""
        lo = [c[0] for c in self.neg if c.numel()] + ([self.pos[0]] if self.n_pos else [])
        hi = [c[-1] for c in self.neg if c.numel()] + ([self.pos[-1]] if self.n_pos else [])
        return float(torch.stack(lo).min()), float(torch.stack(hi).max())


def rank_scores(
    scores: torch.Tensor, positive: torch.Tensor, *, keep_order: bool = False, name: str = "scores"
) -> Ranked:
    """Split ``scores`` by the bool tensor ``positive`` (same shape) and sort both parts.

    Holds one copy of the scores (negatives + positives); works on the scores' device.
    Raises on NaN/infinite scores (checked on the sorted ends: NaN sorts last).
    """
    if scores.device.type == "cpu":
        # numpy: boolean selection ~7x faster than torch on CPU, and an in-place sort
        # (torch.sort always allocates int64 indices: 8 bytes per pixel more)
        s_np = scores.numpy()
        m_np = positive.cpu().numpy()
        pos_np = s_np[m_np]
        neg_np = s_np[~m_np]
        neg = [torch.from_numpy(c) for c in _sort_chunks_inplace(neg_np)]
        pos_raw = torch.from_numpy(pos_np)
    else:
        positive = positive.to(scores.device)
        pos_raw = scores[positive]
        neg = [torch.sort(scores[~positive]).values]
    if keep_order:
        pos, order = torch.sort(pos_raw)
    else:
        pos, order = torch.sort(pos_raw).values, None
    del pos_raw
    for part in [*neg, pos]:
        if part.numel() and not (bool(torch.isfinite(part[0])) and bool(torch.isfinite(part[-1]))):
            raise ValueError(
                f"{name} contain NaN or infinite values; scores must be finite "
                "(check the model output for NaN before evaluating)"
            )
    return Ranked(neg, pos, order, sum(c.numel() for c in neg), pos.numel())


@dataclass
class PosTable:
    """Per distinct positive value ``u_k`` (ascending): counts needed by every metric.

    u: (K,) distinct positive values; m: (K,) multiplicity; inverse: (P,) group of each sorted
    positive; lt/le: (K,) negatives < u_k / <= u_k; tp: (K,) positives >= u_k.
    """

    u: torch.Tensor
    m: torch.Tensor
    inverse: torch.Tensor
    lt: torch.Tensor
    le: torch.Tensor
    tp: torch.Tensor


def pos_table(r: Ranked) -> PosTable:
    """Group the sorted positives by distinct value and count the negatives below each (see :class:`PosTable`)."""
    u, inverse, m = torch.unique_consecutive(r.pos, return_inverse=True, return_counts=True)
    lt = r.count_lt(u)
    le = r.count_le(u)
    tp = torch.flip(torch.cumsum(torch.flip(m, (0,)), 0), (0,))
    return PosTable(u, m, inverse, lt, le, tp)


def auroc_from(r: Ranked, t: PosTable) -> float:
    """Exact AUROC: the Mann-Whitney statistic, ties counted one half, over ``n_pos * n_neg``."""
    # Mann-Whitney U: each (pos, neg) pair counts 1 if pos > neg, 1/2 if tied; int64 exact
    twice_u = int((t.m * (t.lt + t.le)).sum())
    return twice_u / (2 * r.n_pos * r.n_neg)


def ap_from(r: Ranked, t: PosTable) -> float:
    """Exact average precision: scikit-learn's step sum, precision at each distinct positive value."""
    fp = r.n_neg - t.lt  # negatives >= u_k
    tp = t.tp.double()
    precision = tp / (tp + fp.double())
    return float((t.m.double() * precision).sum() / r.n_pos)


def f1max_from(r: Ranked, t: PosTable) -> tuple[float, float]:
    """``(best F1, its threshold)`` over the distinct positive values; on exact ties, the lowest threshold."""
    fp = (r.n_neg - t.lt).double()
    tp = t.tp.double()
    f1 = 2 * tp / (tp + fp + r.n_pos)  # = 2PR / (P + R)
    best = f1.max()
    # exact ties (equal fractions that rounding may order either way): the lowest threshold,
    # as np.argmax on scikit-learn's increasing-threshold curve picks for exact ties
    k = int(torch.nonzero(f1 >= best * (1 - 1e-12))[0])
    return float(best), float(t.u[k])


def at_least(threshold: float, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """The smallest value of ``dtype`` that is ``>= threshold``, as a 0-d tensor: for values ``x`` of
    that dtype, ``x >= at_least(t)`` is exactly ``float(x) >= t`` (no rounding of ``t`` to the dtype)."""
    t = float(threshold)
    if t != t:
        raise ValueError("the threshold is NaN; give a finite threshold (is the calibration missing?)")
    value = torch.tensor(t, dtype=torch.float64).to(dtype)
    if float(value) < t:
        value = torch.nextafter(value, torch.tensor(float("inf"), dtype=dtype))
    return value.to(device)


def f1_at_from(r: Ranked, threshold: float) -> float:
    """Exact F1 = 2 TP / (2 TP + FP + FN) of ``score >= threshold`` (compared as float64) over all
    the ranked scores pooled: TP/FP/FN are counts over every item, not a mean of per-item F1s. 0 when
    nothing is positive at all (no TP)."""
    th = at_least(threshold, r.pos.dtype, r.pos.device)
    tp = r.n_pos - int(torch.searchsorted(r.pos, th.reshape(1), right=False))
    fp = r.n_neg - int(r.count_lt(th.reshape(1)))
    denominator = tp + fp + r.n_pos  # = 2 TP + FP + FN
    return 2 * tp / denominator if tp else 0.0


def _prepare(scores: ArrayLike, labels: ArrayLike, what: str) -> Ranked:
    s = scores_1d(scores, "scores")
    y = binary_labels(labels, "labels")
    same_length(s, y, "scores", "labels")
    check_both_classes(y, what)
    return rank_scores(s, y.to(s.device))


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve; equals ``sklearn.metrics.roc_auc_score``.

    scores: (n,) or any shape, flattened; labels: same number of 0/1 values.
    """
    r = _prepare(scores, labels, "auroc")
    return auroc_from(r, pos_table(r))


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds; equals
    ``sklearn.metrics.average_precision_score``. scores/labels: (n,) or any shape, flattened."""
    r = _prepare(scores, labels, "average_precision")
    return ap_from(r, pos_table(r))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over the precision-recall curve and the threshold reaching it (``score >= t``
    is called anomalous). Thresholds with the same F1 (up to 1e-12 relative rounding): the
    lowest one. Exact F1 = 2 TP / (2 TP + FP + FN), no epsilon."""
    r = _prepare(scores, labels, "f1_max")
    return f1max_from(r, pos_table(r))


# ---------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------


def downsample_idx(x: np.ndarray, y: np.ndarray, max_points: int | None) -> np.ndarray:
    """Indices of at most ``max_points`` curve points, evenly spaced along the curve's L1 arc
    length (keeps the shape where the curve bends), always with both end points."""
    n = len(x)
    if max_points is None or n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    step = np.abs(np.diff(x)) + np.abs(np.diff(y))
    step = np.where(np.isfinite(step), step, 0.0)
    arc = np.concatenate([[0.0], np.cumsum(step)])
    if arc[-1] <= 0:
        idx = np.linspace(0, n - 1, max_points).round().astype(np.int64)
    else:
        idx = np.searchsorted(arc, np.linspace(0, arc[-1], max_points - 1), side="left")
    return np.unique(np.concatenate([[0], np.clip(idx, 0, n - 1), [n - 1]]))


def _binary_clf_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = scores_1d(scores, "scores").cpu()
    y = binary_labels(labels, "labels").cpu()
    same_length(s, y, "scores", "labels")
    check_both_classes(y, "curve")
    order = torch.argsort(s, descending=True, stable=True)
    s_sorted = s[order].numpy()
    y_sorted = y[order].numpy()
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = 1 + ends - tps
    return fps, tps, s_sorted[ends].astype(np.float64)


def roc_curve(
    scores: ArrayLike, labels: ArrayLike, *, max_points: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, like ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)``: thresholds decreasing, first point (0, 0) at threshold +inf.

    Sorts all scores with indices: meant for image-level sizes (use
    ``evaluate(..., return_curves=True)`` for pixel curves). ``max_points`` downsamples.
    """
    fps, tps, thr = _binary_clf_curve(scores, labels)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    thr = np.r_[np.inf, thr]
    idx = downsample_idx(fpr, tpr, max_points)
    return fpr[idx], tpr[idx], thr[idx]


def pr_curve(
    scores: ArrayLike, labels: ArrayLike, *, max_points: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) like ``sklearn.metrics.precision_recall_curve``:
    thresholds increasing, a final point (precision 1, recall 0) without threshold.
    ``max_points`` downsamples (the final point is kept)."""
    fps, tps, thr = _binary_clf_curve(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], 0.0]
    thr = thr[::-1]
    idx = downsample_idx(recall, precision, max_points)
    thr_idx = idx[idx < len(thr)]
    return precision[idx], recall[idx], thr[thr_idx]


def curves_from(r: Ranked, t: PosTable, max_points: int | None) -> dict[str, dict[str, np.ndarray]]:
    """ROC and PR curves from the positive table (pixel level, without a full sort).

    ROC: the exact ROC polyline (vertices before and after each distinct positive value, plus
    (0,0) and (1,1)), downsampled. PR: one point per distinct positive value (where the recall
    changes; the negative-only thresholds in between only lower the precision), thresholds
    increasing, then (precision 1, recall 0).
    """
    n, p = r.n_neg, r.n_pos
    lt, le = t.lt.cpu().numpy(), t.le.cpu().numpy()
    tp = t.tp.cpu().numpy()
    m = t.m.cpu().numpy()
    u = t.u.double().cpu().numpy()
    tp_above = tp - m
    # vertices in decreasing threshold order: before u_k (negatives > u_k, positives > u_k),
    # after u_k (negatives >= u_k, positives >= u_k)
    fpr = np.stack([(n - le) / n, (n - lt) / n], 1)[::-1].reshape(-1)
    tpr = np.stack([tp_above / p, tp / p], 1)[::-1].reshape(-1)
    thr = np.stack([u, u], 1)[::-1].reshape(-1)
    fpr = np.r_[0.0, fpr, 1.0]
    tpr = np.r_[0.0, tpr, 1.0]
    thr = np.r_[np.inf, thr, -np.inf]
    i = downsample_idx(fpr, tpr, max_points)
    roc = {"fpr": fpr[i], "tpr": tpr[i], "thresholds": thr[i]}
    precision = np.r_[tp / (tp + (n - lt)), 1.0]
    recall = np.r_[tp / p, 0.0]
    j = downsample_idx(recall, precision, max_points)
    pr = {"precision": precision[j], "recall": recall[j], "thresholds": u[j[j < len(u)]]}
    return {"roc": roc, "pr": pr}
