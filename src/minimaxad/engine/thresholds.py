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


def calibrate_thresholds(
    normal_scores: np.ndarray,
    normal_maps: torch.Tensor,
    *,
    image_fpr: float,
    pixel_fpr: float,
    source: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Thresholds from the scores ``(N,)`` and maps ``(N, H, W)`` of normal images.

    ``source`` says where the normal images came from (shown in reports).
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    pixels = normal_maps.reshape(-1)
    if pixels.numel() > MAX_PIXEL_SAMPLES:  # a uniform sample keeps the quantile to ~1e-3 precision
        g = torch.Generator().manual_seed(seed)
        pixels = pixels[torch.randint(pixels.numel(), (MAX_PIXEL_SAMPLES,), generator=g)]
    pixels = np.sort(pixels.double().numpy())
    # keep a compact summary of the pixel distribution for later re-calibration
    pixel_quantiles = np.quantile(pixels, np.linspace(0, 1, 1001))
    image_value = quantile_threshold(scores, image_fpr)
    pixel_value = quantile_threshold(pixels, pixel_fpr)
    n = len(scores)
    return {
        "image": {
            "value": image_value,
            "method": "fpr",
            "fpr": image_fpr,
            "note": f"{100 * (1 - image_fpr):g}th percentile of the image scores of {n} {source}",
        },
        "pixel": {
            "value": pixel_value,
            "method": "fpr",
            "fpr": pixel_fpr,
            "note": f"{100 * (1 - pixel_fpr):g}th percentile of the pixel scores of {n} {source}",
        },
        "normal_scores": scores.tolist(),
        "normal_pixel_quantiles": pixel_quantiles.tolist(),
        "source": source,
    }


def resolve_thresholds(
    calibration: dict[str, Any] | None,
    *,
    image_threshold: float | None = None,
    false_positive_rate: float | None = None,
    pixel_threshold: float | None = None,
    pixel_false_positive_rate: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The thresholds in force: user overrides first, then the stored calibration.

    Returns ``{"image": {"value", "note"}, "pixel": {"value", "note"}}``; a value is None when
    nothing defines it (no calibration and no override).
    """
    calibration = calibration or {}
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


def normalize_scores(scores: np.ndarray, threshold: float, normal_scores: np.ndarray | None) -> np.ndarray:
    """Map scores to [0, 1] with the threshold at 0.5: linear from the lowest normal score (0)
    to the threshold (0.5), and on to ``threshold + (threshold - lowest)`` (1), clipped."""
    scores = np.asarray(scores, dtype=np.float64)
    low = float(np.min(normal_scores)) if normal_scores is not None and len(normal_scores) else float(scores.min())
    span = max(threshold - low, 1e-12)
    return np.clip(0.5 + 0.5 * (scores - threshold) / span, 0.0, 1.0)
