"""Decision thresholds calibrated on normal images, and score normalisation.

The image threshold is the ``1 - fpr`` quantile of the image scores of normal images held out
of training, so that about ``fpr`` of normal images are flagged; the pixel threshold likewise
over their pixels. The sorted normal scores are kept in the checkpoint, so a different target
false-positive rate can be chosen later without the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

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


@dataclass(frozen=True)
class Threshold:
    """One threshold in force: its value (None when nothing defines it) and how it was chosen."""

    value: float | None
    note: str

    def as_dict(self) -> dict[str, Any]:
        """``{"value", "note"}``: the form stored in results, reports and answers."""
        return {"value": self.value, "note": self.note}


@dataclass(frozen=True)
class Thresholds:
    """The thresholds in force for one category (or the whole model) and the one way scores become
    decisions, shared by ``test``, the report, ``predict``, ``serve`` and ``watch``.

    ``calibrated_for`` names whose calibration the values come from: the category itself, its
    parent category (an AeBAD-S test domain ``category/domain``), or None for the model's own.
    """

    image: Threshold
    pixel: Threshold
    category: str | None = None
    calibrated_for: str | None = None
    normal_scores: np.ndarray | None = field(default=None, repr=False)  # (M,) sorted, for normalising

    def decisions(self, scores: np.ndarray) -> list[str]:
        """``"anomalous"`` (score >= image threshold), ``"normal"``, or ``"unknown"`` without a threshold."""
        if self.image.value is None:
            return ["unknown"] * len(scores)
        return ["anomalous" if flagged else "normal" for flagged in self.is_anomalous(scores)]

    def is_anomalous(self, scores: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: score >= image threshold (all False without a threshold)."""
        scores = np.asarray(scores)
        if self.image.value is None:
            return np.zeros(scores.shape, dtype=bool)
        return scores >= self.image.value

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """``(N,)`` scores mapped to [0, 1] with the threshold at 0.5 (NaN without a threshold)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.image.value is None:
            return np.full(scores.shape, np.nan)
        return normalize_scores(scores, self.image.value, self.normal_scores)

    def defect_masks(self, maps: np.ndarray) -> np.ndarray | None:
        """``maps >= pixel threshold`` (None without a pixel threshold)."""
        return None if self.pixel.value is None else np.asarray(maps) >= self.pixel.value

    def with_image_threshold(self, value: float, note: str) -> "Thresholds":
        """The same rule with another image threshold (a request's own, say)."""
        return replace(self, image=Threshold(float(value), note))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{"image": {"value", "note"}, "pixel": {"value", "note"}}``."""
        return {"image": self.image.as_dict(), "pixel": self.pixel.as_dict()}


def near_threshold(scores: np.ndarray, thresholds: Sequence[float | None], margin: float) -> np.ndarray:
    """``(N,)`` bool: scores within ``margin`` (relative) of their own threshold; these are the
    ones a reduced-precision backend re-scores in float32 so that decisions are float32's."""
    near = np.zeros(len(scores), dtype=bool)
    if margin > 0:
        for i, threshold in enumerate(thresholds):
            if threshold is not None:
                near[i] = abs(float(scores[i]) - threshold) <= margin * abs(threshold)
    return near


def thresholds_for(
    calibration: dict[str, Any] | None,
    category: str | None = None,
    *,
    known_categories: Sequence[str] | None = None,
    image_threshold: float | None = None,
    false_positive_rate: float | None = None,
    pixel_threshold: float | None = None,
    pixel_false_positive_rate: float | None = None,
) -> Thresholds:
    """The thresholds in force for ``category``: user overrides first, then the stored calibration.

    The one fallback rule: a category's own calibration when it has one; for ``category/domain``
    (an AeBAD-S test domain) its category's; otherwise the model's, with a note that says so (a
    category of a unified model gets no thresholds of its own when fewer than two of its normal
    images were held out). With ``known_categories`` (the categories the model was trained on), a
    category outside them is refused with a :class:`ValueError`.
    """
    calibration = calibration or {}
    own = calibration.get("per_category") or {}
    chosen, calibrated_for, fallback = calibration, None, None
    if category is not None:
        parent = category.rsplit("/", 1)[0] if "/" in category else None
        if category in own:
            chosen, calibrated_for = own[category], category
        elif parent in own:
            chosen, calibrated_for = own[parent], parent
        elif known_categories and category not in known_categories and parent not in known_categories:
            raise ValueError(f"unknown category {category!r}; this model knows {', '.join(sorted(known_categories))}")
        elif own:
            fallback = f"the model's threshold: category {category!r} has no calibration of its own"
    resolved = {}
    for kind, value, fpr, stored_key in (
        ("image", image_threshold, false_positive_rate, "normal_scores"),
        ("pixel", pixel_threshold, pixel_false_positive_rate, "normal_pixel_quantiles"),
    ):
        stored = chosen.get(kind) or {}
        if value is not None:
            resolved[kind] = Threshold(float(value), f"set by the user ({kind} threshold {value:g})")
        elif fpr is not None:
            normal = chosen.get(stored_key)
            if not normal:
                raise ValueError(
                    f"a {kind} false-positive rate needs the normal scores stored at calibration, "
                    f"and this checkpoint has none; pass an explicit threshold instead"
                )
            resolved[kind] = Threshold(
                quantile_threshold(np.asarray(normal), fpr),
                f"{100 * (1 - fpr):g}th percentile of the calibration scores "
                f"({chosen.get('source', 'normal images')}), chosen by the user's false-positive rate",
            )
        elif "value" in stored:
            note = stored.get("note", "calibrated")
            resolved[kind] = Threshold(float(stored["value"]), f"{fallback} ({note})" if fallback else note)
        else:
            resolved[kind] = Threshold(None, "not calibrated")
    normal = chosen.get("normal_scores")
    return Thresholds(
        resolved["image"],
        resolved["pixel"],
        category=category,
        calibrated_for=calibrated_for,
        normal_scores=np.asarray(normal, dtype=np.float64) if normal else None,
    )


def resolve_thresholds(
    calibration: dict[str, Any] | None, *, category: str | None = None, **overrides: Any
) -> dict[str, dict[str, Any]]:
    """:func:`thresholds_for` as ``{"image": {"value", "note"}, "pixel": {"value", "note"}}``."""
    return thresholds_for(calibration, category, **overrides).as_dict()


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
