"""Decision thresholds calibrated on normal images, and score normalisation.

The image threshold is the ``1 - fpr`` quantile of the image scores of normal images held out
of training, so that about ``fpr`` of normal images are flagged. The pixel threshold comes from
their pixels by one of the named rules of :data:`PIXEL_RULES` (none of which sees a defect; the
default, :data:`DEFAULT_PIXEL_RULE`, is the one that gave the best SegF1 in
``benchmarks/bench_pixel_thresholds.py``, see docs/metrics.md). The sorted normal scores and a
summary of the normal pixels are kept in the checkpoint, so a different target false-positive
rate can be chosen later without the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

MAX_PIXEL_SAMPLES = 2_000_000

#: normal maps: one ``(N, H, W)`` tensor, or one 2-D map per photo (photos of different sizes)
NormalMaps = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray]]]


def quantile_threshold(values: np.ndarray, fpr: float) -> float:
    """The ``1 - fpr`` quantile (linear interpolation) of ``values``."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"false-positive rate must be within [0, 1], got {fpr}")
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no normal scores to calibrate a threshold on")
    return float(np.quantile(values, 1 - fpr))


@dataclass(frozen=True)
class NormalPixels:
    """What a pixel rule sees of the normal maps of one group (the model, or one category).

    ``pixels``: the pooled pixel scores, sorted, as float64: all of them, or a uniform sample of
    :data:`MAX_PIXEL_SAMPLES` when there are more (quantiles to ~1e-3 precision).
    ``image_max``: the highest pixel of each map, sorted (exact, never sampled).
    ``fpr``: the target pixel false-positive rate of the rules that use one.
    """

    pixels: np.ndarray
    image_max: np.ndarray
    fpr: float


@dataclass(frozen=True)
class PixelRule:
    """A named way to choose the pixel threshold from normal pixels only.

    ``value(normal)`` is the threshold; ``describe(normal)`` the start of its note (the caller
    appends "of N <source>"); ``uses_fpr``: whether the pixel false-positive rate matters.
    """

    name: str
    value: Callable[[NormalPixels], float]
    describe: Callable[[NormalPixels], str]
    uses_fpr: bool = False


def _percentile(fpr: float) -> str:
    return f"{100 * (1 - fpr):g}th percentile"


def _quantile_with_margin(pixels: np.ndarray, fpr: float, margin: float) -> float:
    q = quantile_threshold(pixels, fpr)
    return q + margin * (q - float(np.median(pixels)))


# Parameters fixed before measuring (not fitted to any test set): a margin of one
# quantile-to-median distance, three standard deviations, the median and 90th percentile of the
# per-photo maxima.
QUANTILE_MARGIN = 1.0
STD_FACTOR = 3.0

#: The candidate pixel rules, by name. Each sees only normal pixels (:class:`NormalPixels`).
PIXEL_RULES: dict[str, PixelRule] = {
    rule.name: rule
    for rule in (
        # (a) about ``fpr`` of normal pixels are flagged (the rule of every run before this table)
        PixelRule(
            "quantile",
            lambda n: quantile_threshold(n.pixels, n.fpr),
            lambda n: f"{_percentile(n.fpr)} of the pixel scores",
            uses_fpr=True,
        ),
        # (b) the same, moved up by its distance to the median: defect-free maps have long tails
        PixelRule(
            "quantile_margin",
            lambda n: _quantile_with_margin(n.pixels, n.fpr, QUANTILE_MARGIN),
            lambda n: f"{_percentile(n.fpr)} q of the pixel scores + {QUANTILE_MARGIN:g} x (q - median)",
            uses_fpr=True,
        ),
        # (c) no normal pixel at all is flagged
        PixelRule("max", lambda n: float(n.image_max[-1]), lambda n: "highest pixel score"),
        # (d) half (one in ten) of the normal photos have at least one flagged pixel
        PixelRule(
            "image_max_median",
            lambda n: float(np.quantile(n.image_max, 0.5)),
            lambda n: "median of the highest pixel score of each",
        ),
        PixelRule(
            "image_max_p90",
            lambda n: float(np.quantile(n.image_max, 0.9)),
            lambda n: "90th percentile of the highest pixel score of each",
        ),
        # (e) a Gaussian view of the normal pixels
        PixelRule(
            "mean_std",
            lambda n: float(np.mean(n.pixels) + STD_FACTOR * np.std(n.pixels)),
            lambda n: f"mean + {STD_FACTOR:g} standard deviations of the pixel scores",
        ),
    )
}

#: The pixel rule of :func:`calibrate_thresholds` unless told otherwise: the best mean SegF1 over the
#: small photos and the tiled large ones of benchmarks/bench_pixel_thresholds.py (docs/metrics.md);
#: runs before 2026-12-03 used "quantile", which lets through a fixed fraction of each photo's pixels.
DEFAULT_PIXEL_RULE = "image_max_p90"


def get_pixel_rule(name: str) -> PixelRule:
    """The rule of :data:`PIXEL_RULES` called ``name`` (a ValueError naming the others if none is)."""
    try:
        return PIXEL_RULES[name]
    except KeyError:
        raise ValueError(f"unknown pixel threshold rule {name!r}; choose one of {', '.join(PIXEL_RULES)}") from None


def _check_maps(maps: NormalMaps) -> torch.Tensor | list[torch.Tensor]:
    """One ``(N, H, W)`` tensor as it is, or a list of 2-D tensors (never copied)."""
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if isinstance(maps, torch.Tensor):
        if maps.dim() != 3:
            raise ValueError(
                f"normal maps of shape {tuple(maps.shape)}; expected (N, H, W), or a list of 2-D maps (one per photo)"
            )
        return maps
    out = []
    for i, amap in enumerate(maps):
        amap = torch.as_tensor(amap)
        if amap.dim() != 2:
            raise ValueError(
                f"normal map {i} has shape {tuple(amap.shape)}; expected one 2-D (H, W) map per photo "
                f"(or one (N, H, W) tensor for photos of one size)"
            )
        out.append(amap)
    return out


def _pixel_sample(maps: torch.Tensor | list[torch.Tensor], seed: int) -> np.ndarray:
    """The pooled pixels, sorted float64, or a uniform sample of MAX_PIXEL_SAMPLES of them.

    A list of maps gives exactly what the same pixels in one tensor give (the same seeded indices
    into their concatenation), without ever concatenating full-size maps."""
    if isinstance(maps, torch.Tensor):
        pixels = maps.reshape(-1)
        if pixels.numel() > MAX_PIXEL_SAMPLES:  # a uniform sample keeps the quantile to ~1e-3 precision
            g = torch.Generator().manual_seed(seed)
            pixels = pixels[torch.randint(pixels.numel(), (MAX_PIXEL_SAMPLES,), generator=g)]
        return np.sort(pixels.double().numpy())
    flat = [m.reshape(-1) for m in maps]
    total = sum(p.numel() for p in flat)
    if total <= MAX_PIXEL_SAMPLES:
        parts = [p.double().numpy() for p in flat]
    else:
        g = torch.Generator().manual_seed(seed)
        index = torch.randint(total, (MAX_PIXEL_SAMPLES,), generator=g).sort().values
        ends = torch.tensor([p.numel() for p in flat]).cumsum(0)
        bounds = torch.searchsorted(index, ends).tolist()  # the sorted indices falling in each map
        parts, start, offset = [], 0, 0
        for p, stop, end in zip(flat, bounds, ends.tolist()):
            parts.append(p[index[start:stop] - offset].double().numpy())
            start, offset = stop, end
    return np.sort(np.concatenate(parts))


def normal_pixels(maps: NormalMaps, fpr: float, seed: int = 0) -> NormalPixels:
    """The :class:`NormalPixels` of ``maps`` (one ``(N, H, W)`` tensor or a list of 2-D maps)."""
    maps = _check_maps(maps)
    if len(maps) == 0:
        raise ValueError("no normal scores to calibrate a threshold on")
    if isinstance(maps, torch.Tensor):
        image_max = maps.reshape(len(maps), -1).amax(1).double().numpy()
    else:
        image_max = np.array([float(m.max()) for m in maps])
    return NormalPixels(_pixel_sample(maps, seed), np.sort(image_max), fpr)


def _select(maps: torch.Tensor | list[torch.Tensor], index: np.ndarray) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(maps, torch.Tensor):
        return maps[torch.from_numpy(index)]
    return [maps[i] for i in index]


def _calibrate_group(
    scores: np.ndarray,
    maps: torch.Tensor | list[torch.Tensor],
    image_fpr: float,
    pixel_fpr: float,
    source: str,
    seed: int,
    rule: PixelRule,
) -> dict[str, Any]:
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    image = {
        "value": quantile_threshold(scores, image_fpr),
        "method": "fpr",
        "fpr": image_fpr,
        "note": f"{_percentile(image_fpr)} of the image scores of {n} {source}",
    }
    normal = normal_pixels(maps, pixel_fpr, seed)
    pixel: dict[str, Any] = {"value": float(rule.value(normal)), "method": rule.name}
    if rule.uses_fpr:
        pixel["fpr"] = pixel_fpr
    pixel["note"] = f"{rule.describe(normal)} of {n} {source}"
    return {
        "image": image,
        "pixel": pixel,
        "normal_scores": scores.tolist(),
        # a compact summary of the pixel distribution, for re-calibration without the data
        "normal_pixel_quantiles": np.quantile(normal.pixels, np.linspace(0, 1, 1001)).tolist(),
        "source": source,
    }


def calibrate_thresholds(
    normal_scores: np.ndarray,
    normal_maps: NormalMaps,
    *,
    image_fpr: float,
    pixel_fpr: float,
    source: str,
    seed: int = 0,
    categories: list[str] | None = None,
    pixel_rule: str = DEFAULT_PIXEL_RULE,
) -> dict[str, Any]:
    """Thresholds from the scores ``(N,)`` and maps of normal images.

    ``normal_maps``: one ``(N, H, W)`` tensor, or a sequence of N 2-D maps of any sizes (one per
    photo, e.g. full-resolution tiled photos); the same pixels give the same thresholds either
    way. ``pixel_rule`` names the rule of :data:`PIXEL_RULES` that sets the pixel threshold
    (recorded as the pixel entry's ``method``; ``pixel_fpr`` matters only to the quantile rules).
    ``source`` says where the normal images came from (shown in reports). With ``categories``
    (one per image) and several of them, as in a unified model, each category with at least two
    images also gets its own thresholds under ``per_category``: score scales differ between
    categories, so one threshold for all would flag some categories far more than others.
    """
    rule = get_pixel_rule(pixel_rule)  # an unknown name fails before any work
    maps = _check_maps(normal_maps)
    if len(maps) != len(normal_scores):
        raise ValueError(
            f"{len(normal_scores)} normal scores but {len(maps)} normal maps; give one map per image, in the same order"
        )
    calibration = _calibrate_group(normal_scores, maps, image_fpr, pixel_fpr, source, seed, rule)
    if categories is not None and len(set(categories)) > 1:
        if len(categories) != len(normal_scores):
            raise ValueError(f"{len(categories)} categories for {len(normal_scores)} normal images; give one per image")
        names = np.asarray(categories)
        scores = np.asarray(normal_scores)
        per_category = {}
        for name in sorted(set(categories)):
            index = np.flatnonzero(names == name)
            if len(index) >= 2:
                per_category[name] = _calibrate_group(
                    scores[index],
                    _select(maps, index),
                    image_fpr,
                    pixel_fpr,
                    f"{source} of category {name}",
                    seed,
                    rule,
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
