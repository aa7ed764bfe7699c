"""Decision thresholds calibrated on normal images, and score normalisation.

The image threshold is the ``1 - fpr`` quantile of the image scores of normal images held out
of training, so that about ``fpr`` of normal images are flagged; the pixel threshold likewise
over their pixels. The sorted normal scores are kept in the checkpoint, so a different target
false-positive rate can be chosen later without the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MAX_PIXEL_SAMPLES = 2_000_000


def quantile_threshold(values: np.ndarray, fpr: float) -> float:
    """The ``1 - fpr`` quantile (linear interpolation) of ``values``."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"false-positive rate must be within [0, 1], got {fpr}")
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no normal scores to calibrate a threshold on")
    return float(np.quantile(values, 1 - fpr))


def _calibrate_group(
    scores: np.ndarray, maps: torch.Tensor, image_fpr: float, pixel_fpr: float, source: str, seed: int
) -> dict[str, Any]:
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    pixels = maps.reshape(-1)
    if pixels.numel() > MAX_PIXEL_SAMPLES:  # a uniform sample keeps the quantile to ~1e-3 precision
        g = torch.Generator().manual_seed(seed)
        pixels = pixels[torch.randint(pixels.numel(), (MAX_PIXEL_SAMPLES,), generator=g)]
    pixels = np.sort(pixels.double().numpy())
    n = len(scores)
    return {
        "image": {
            "value": quantile_threshold(scores, image_fpr),
            "method": "fpr",
            "fpr": image_fpr,
            "note": f"{100 * (1 - image_fpr):g}th percentile of the image scores of {n} {source}",
        },
        "pixel": {
            "value": quantile_threshold(pixels, pixel_fpr),
            "method": "fpr",
            "fpr": pixel_fpr,
            "note": f"{100 * (1 - pixel_fpr):g}th percentile of the pixel scores of {n} {source}",
        },
        "normal_scores": scores.tolist(),
        # a compact summary of the pixel distribution, for re-calibration without the data
        "normal_pixel_quantiles": np.quantile(pixels, np.linspace(0, 1, 1001)).tolist(),
        "source": source,
    }


def calibrate_thresholds(
    normal_scores: np.ndarray,
    normal_maps: torch.Tensor,
    *,
    image_fpr: float,
    pixel_fpr: float,
    source: str,
    seed: int = 0,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """Thresholds from the scores ``(N,)`` and maps ``(N, H, W)`` of normal images.

    ``source`` says where the normal images came from (shown in reports). With ``categories``
    (one per image) and several of them, as in a unified model, each category with at least two
    images also gets its own thresholds under ``per_category``: score scales differ between
    categories, so one threshold for all would flag some categories far more than others.
    """
    calibration = _calibrate_group(normal_scores, normal_maps, image_fpr, pixel_fpr, source, seed)
    if categories is not None and len(set(categories)) > 1:
        names = np.asarray(categories)
        scores = np.asarray(normal_scores)
        per_category = {}
        for name in sorted(set(categories)):
            index = np.flatnonzero(names == name)
            if len(index) >= 2:
                per_category[name] = _calibrate_group(
                    scores[index],
                    normal_maps[torch.from_numpy(index)],
                    image_fpr,
                    pixel_fpr,
                    f"{source} of category {name}",
                    seed,
                )
        calibration["per_category"] = per_category
    return calibration


def resolve_thresholds(
    calibration: dict[str, Any] | None,
    *,
    category: str | None = None,
    image_threshold: float | None = None,
    false_positive_rate: float | None = None,
    pixel_threshold: float | None = None,
    pixel_false_positive_rate: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The thresholds in force: user overrides first, then the stored calibration (the
    ``category``'s own when it has one, else, for ``category/domain``, its category's, else the
    model's).

    Returns ``{"image": {"value", "note"}, "pixel": {"value", "note"}}``; a value is None when
    nothing defines it (no calibration and no override).
    """
    calibration = calibration or {}
    own = calibration.get("per_category") or {}
    if category is not None and category not in own and "/" in category:
        category = category.rsplit("/", 1)[0]  # an AeBAD-S test domain ("AeBAD_S/view"): its category's
    if category is not None and category in own:
        calibration = own[category]
    out: dict[str, dict[str, Any]] = {}
    for kind, value, fpr, stored_key in (
        ("image", image_threshold, false_positive_rate, "normal_scores"),
        ("pixel", pixel_threshold, pixel_false_positive_rate, "normal_pixel_quantiles"),
    ):
        stored = calibration.get(kind) or {}
        if value is not None:
            out[kind] = {"value": float(value), "note": f"set by the user ({kind} threshold {value:g})"}
        elif fpr is not None:
            normal = calibration.get(stored_key)
            if not normal:
                raise ValueError(
                    f"a {kind} false-positive rate needs the normal scores stored at calibration, "
                    f"and this checkpoint has none; pass an explicit threshold instead"
                )
            out[kind] = {
                "value": quantile_threshold(np.asarray(normal), fpr),
                "note": f"{100 * (1 - fpr):g}th percentile of the calibration scores "
                f"({calibration.get('source', 'normal images')}), chosen by the user's false-positive rate",
            }
        elif "value" in stored:
            out[kind] = {"value": float(stored["value"]), "note": stored.get("note", "calibrated")}
        else:
            out[kind] = {"value": None, "note": "not calibrated"}
    return out


def thresholds_by_category(
    calibration: dict[str, Any] | None, categories: list[str], **overrides: Any
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`resolve_thresholds` for each category: ``{category: {"image": ..., "pixel": ...}}``."""
    return {c: resolve_thresholds(calibration, category=c, **overrides) for c in categories}


def normalize_scores(scores: np.ndarray, threshold: float, normal_scores: np.ndarray | None) -> np.ndarray:
    """Map scores to [0, 1] with the threshold at 0.5: linear from the lowest normal score (0)
    to the threshold (0.5), and on to ``threshold + (threshold - lowest)`` (1), clipped."""
    scores = np.asarray(scores, dtype=np.float64)
    low = float(np.min(normal_scores)) if normal_scores is not None and len(normal_scores) else float(scores.min())
    span = max(threshold - low, 1e-12)
    return np.clip(0.5 + 0.5 * (scores - threshold) / span, 0.0, 1.0)
