"""Evaluation metrics of MiniMaxAD, exact and fast on full benchmark test sets.

Image level: AUROC, average precision, F1-max. Pixel level: AUROC, AP, F1-max, the exact
AUPRO and the authors' 200-threshold AUPRO (the paper's tables), and MVTec AD 2's SegF1 (the
pooled pixel F1 at the model's own calibrated pixel threshold; ``seg_f1_max`` the oracle F1-max,
the same quantity as ``p_f1max``). Optional bootstrap
confidence intervals for the image-level metrics. See ``docs/metrics.md``.

>>> from minimaxad.metrics import evaluate
>>> result = evaluate(image_scores, labels, anomaly_maps=maps, masks=masks)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ._inputs import ArrayLike, binary_labels, check_both_classes, maps_3d, same_length, scores_1d
from .bootstrap import bootstrap_ci
from .pro import PixelData, aupro, aupro_200, aupro_200_from, aupro_exact_from, label_regions
from .ranking import (
    ap_from,
    auroc,
    auroc_from,
    average_precision,
    curves_from,
    f1_at_from,
    f1_max,
    f1max_from,
    pos_table,
    pr_curve,
    rank_scores,
    roc_curve,
)

__all__ = [
    "evaluate",
    "auroc",
    "average_precision",
    "f1_max",
    "seg_f1",
    "aupro",
    "aupro_200",
    "roc_curve",
    "pr_curve",
    "bootstrap_ci",
    "label_regions",
    "METRIC_KEYS",
]

#: the scalar metrics ``evaluate`` can return (pixel ones only with maps and masks; ``seg_f1`` only
#: with a pixel threshold; ``seg_f1_max`` is ``p_f1max`` under MVTec AD 2's name)
METRIC_KEYS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro", "aupro_200", "seg_f1", "seg_f1_max")

_CURVE_POINTS = 500


def evaluate(
    image_scores: ArrayLike,
    labels: ArrayLike,
    anomaly_maps: ArrayLike | None = None,
    masks: ArrayLike | None = None,
    *,
    pro_integration_limit: float = 0.3,
    aupro_exact: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
    return_curves: bool = False,
    pixel_threshold: float | None = None,
    valid: ArrayLike | None = None,
) -> dict[str, Any]:
    """All metrics of a test set.

    image_scores: (N,) float; labels: (N,) 0/1 (1 = anomalous); anomaly_maps: (N, H, W) or
    (N, 1, H, W) float; masks: same shape, binarised ``> 0.5``. numpy arrays or tensors (maps
    on any device: the pixel metrics run there; region labelling runs on the CPU). valid: same
    shape, bool: only these pixels count (maps of photos of different sizes padded into one stack).

    Returns floats under ``i_auroc, i_ap, i_f1max, i_f1max_threshold`` and, when maps and
    masks are both given and the masks contain at least one anomalous pixel, ``p_auroc, p_ap,
    p_f1max, p_f1max_threshold, aupro`` (exact; skipped with ``aupro_exact=False``) and
    ``aupro_200`` (the paper's), and ``seg_f1_max`` (= ``p_f1max``: MVTec AD 2's oracle SegF1).
    With ``pixel_threshold`` (the model's calibrated one) also ``seg_f1``: the F1 of ``map >=
    pixel_threshold`` over all pixels of all images pooled, and ``seg_f1_threshold``. Pixel metrics
    are *absent* (not NaN) when the masks have no anomalous pixel. ``bootstrap=B > 0`` adds ``i_auroc_ci, i_ap_ci, i_f1max_ci`` = (lo, hi),
    95 % percentile intervals over B stratified image resamples seeded by ``seed``.
    ``return_curves`` adds ``curves = {"image": {"roc": {fpr, tpr, thresholds}, "pr":
    {precision, recall, thresholds}}, "pixel": {... same ..., "pro": {fpr, pro, thresholds}}}``
    (numpy arrays, at most ~500 points; the pixel PRO curve is the 200-threshold one, FPR not
    rescaled).

    Raises ValueError for one class only, NaN/infinite scores, mismatched lengths or shapes,
    and masks that mark every pixel anomalous.
    """
    scores = scores_1d(image_scores, "image_scores").cpu()
    y = binary_labels(labels, "labels").cpu()
    same_length(scores, y, "image_scores", "labels")
    check_both_classes(y, "image-level metrics (labels)")
    out: dict[str, Any] = {}
    r = rank_scores(scores, y, name="image_scores")
    t = pos_table(r)
    out["i_auroc"] = auroc_from(r, t)
    out["i_ap"] = ap_from(r, t)
    out["i_f1max"], out["i_f1max_threshold"] = f1max_from(r, t)
    curves: dict[str, Any] = {}
    if return_curves:
        fpr, tpr, thr = roc_curve(scores, y, max_points=_CURVE_POINTS)
        prec, rec, pthr = pr_curve(scores, y, max_points=_CURVE_POINTS)
        curves["image"] = {
            "roc": {"fpr": fpr, "tpr": tpr, "thresholds": thr},
            "pr": {"precision": prec, "recall": rec, "thresholds": pthr},
        }

    if anomaly_maps is not None and masks is not None:
        n_maps = maps_3d(anomaly_maps, "anomaly_maps").shape[0]
        if n_maps != scores.numel():
            raise ValueError(
                f"anomaly_maps has {n_maps} maps but image_scores has {scores.numel()} "
                "values; give one map per test item, in the same order"
            )
        data = PixelData(anomaly_maps, masks, valid=valid)
        if data.has_positive:
            if not data.has_negative:
                raise ValueError(
                    "masks mark every pixel anomalous: pixel metrics need normal pixels (are the masks inverted?)"
                )
            pt = data.table
            out["p_auroc"] = auroc_from(data.ranked, pt)
            out["p_ap"] = ap_from(data.ranked, pt)
            out["p_f1max"], out["p_f1max_threshold"] = f1max_from(data.ranked, pt)
            out["seg_f1_max"] = out["p_f1max"]  # the same pooled F1 maximised over thresholds
            if pixel_threshold is not None:
                out["seg_f1"] = f1_at_from(data.ranked, pixel_threshold)
                out["seg_f1_threshold"] = float(pixel_threshold)
            if aupro_exact:
                out["aupro"] = aupro_exact_from(data, pro_integration_limit)
            out["aupro_200"], pro_curve = aupro_200_from(data, pro_integration_limit, return_curve=True)
            if return_curves:
                curves["pixel"] = curves_from(data.ranked, pt, _CURVE_POINTS)
                curves["pixel"]["pro"] = pro_curve
        del data  # the sorted pixel copy

    if bootstrap:
        ci = bootstrap_ci(scores, y, n_boot=int(bootstrap), seed=seed)
        for name, key in (("auroc", "i_auroc_ci"), ("ap", "i_ap_ci"), ("f1max", "i_f1max_ci")):
            out[key] = ci[name]
    if return_curves:
        out["curves"] = curves
    return out


def seg_f1(anomaly_maps: ArrayLike, masks: ArrayLike, threshold: float, valid: ArrayLike | None = None) -> float:
    """MVTec AD 2's SegF1: the F1 of ``map >= threshold`` against the masks (``> 0.5``) over all
    pixels of all images pooled (TP, FP and FN summed over the images, then F1; not a mean of
    per-image F1s). maps/masks: (N, H, W) or (N, 1, H, W); ``valid`` as in :func:`evaluate`. NaN when the masks have no anomalous
    pixel (like the other pixel metrics, the score is undefined there)."""
    data = PixelData(anomaly_maps, masks, need_regions=False, valid=valid)
    if not data.has_positive:
        return float("nan")
    if not data.has_negative:
        raise ValueError("masks mark every pixel anomalous: SegF1 needs normal pixels (are the masks inverted?)")
    return f1_at_from(data.ranked, threshold)
