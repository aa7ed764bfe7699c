"""SegF1 (MVTec AD 2): pooled pixel F1 at the model's calibrated pixel threshold, and its oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.engine.thresholds import thresholds_for
from minimaxad.metrics import METRIC_KEYS, evaluate, f1_max, seg_f1
from minimaxad.reporting.results import evaluate_by_category

# three 2x3 maps and masks; at threshold 0.5 (map >= 0.5 is a defect pixel):
MAPS = np.array(
    [
        [[0.9, 0.6, 0.1], [0.2, 0.7, 0.4]],  # TP 0.9, 0.6; FP 0.7; FN 0.4
        [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]],  # normal image: FP 0.5 (>= counts) and 0.8
        [[0.3, 0.2, 0.1], [0.6, 0.1, 0.1]],  # TP 0.6; FN 0.3, 0.2
    ],
    dtype=np.float32,
)
MASKS = np.array([[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 0], [1, 0, 0]]], dtype=np.float32)
LABELS = np.array([1, 0, 1])


def test_seg_f1_by_hand():
    tp, fp, fn = 2 + 0 + 1, 1 + 2 + 0, 1 + 0 + 2
    expected = 2 * tp / (2 * tp + fp + fn)  # 6 / 12
    assert expected == 0.5
    assert seg_f1(MAPS, MASKS, 0.5) == pytest.approx(expected, abs=1e-15)
    res = evaluate(MAPS.reshape(3, -1).max(1), LABELS, anomaly_maps=MAPS, masks=MASKS, pixel_threshold=0.5)
    assert res["seg_f1"] == pytest.approx(expected, abs=1e-15) and res["seg_f1_threshold"] == 0.5
    # channel axis and torch input give the same
    import torch

    assert seg_f1(torch.from_numpy(MAPS)[:, None], torch.from_numpy(MASKS)[:, None], 0.5) == res["seg_f1"]
    # nothing flagged: F1 0; everything flagged: 2P / (2P + N)
    assert seg_f1(MAPS, MASKS, 2.0) == 0.0
    p, n = int(MASKS.sum()), MASKS.size - int(MASKS.sum())
    assert seg_f1(MAPS, MASKS, 0.0) == pytest.approx(2 * p / (2 * p + n), abs=1e-15)


def test_seg_f1_pools_pixels_not_images():
    def f1(tp: int, fp: int, fn: int) -> float:
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    per_image = [f1(2, 1, 1), f1(0, 2, 0), f1(1, 0, 2)]
    with_defects = [per_image[0], per_image[2]]
    pooled = seg_f1(MAPS, MASKS, 0.5)
    assert pooled == 0.5
    assert abs(pooled - np.mean(per_image)) > 0.1 and abs(pooled - np.mean(with_defects)) > 0.05
    # the threshold is compared exactly (as float64), not rounded to the maps' float32
    value = float(np.float32(0.6))
    above = np.nextafter(value, 1.0)  # strictly between float32(0.6) and the next float32
    assert np.float32(above) == np.float32(0.6)  # rounding it to float32 would still flag the 0.6 pixels
    exact = (MAPS.astype(np.float64) >= above, MASKS > 0.5)
    tp, fp = int((exact[0] & exact[1]).sum()), int((exact[0] & ~exact[1]).sum())
    fn = int(exact[1].sum()) - tp
    assert seg_f1(MAPS, MASKS, above) == pytest.approx(f1(tp, fp, fn), abs=1e-15)
    assert seg_f1(MAPS, MASKS, above) != seg_f1(MAPS, MASKS, value)


def test_seg_f1_max_is_p_f1max_and_bounds_seg_f1():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=np.float32)
    masks[0, 3:7, 4:9] = 1
    masks[2, 10:14, 1:5] = 1
    maps = (rng.random((4, 16, 16)) + 0.8 * masks).astype(np.float32)
    scores = maps.reshape(4, -1).max(1)
    labels = np.array([1, 0, 1, 0])
    oracle = f1_max(maps.reshape(-1), (masks > 0.5).reshape(-1).astype(int))[0]
    for threshold in (0.2, 0.7, 0.95, float(np.quantile(maps[[1, 3]], 0.99))):
        res = evaluate(scores, labels, anomaly_maps=maps, masks=masks, pixel_threshold=threshold)
        assert res["seg_f1_max"] == res["p_f1max"] == pytest.approx(oracle, abs=1e-12)
        assert res["seg_f1_max"] >= res["seg_f1"]
        flagged, defect = maps.astype(np.float64) >= threshold, masks > 0.5
        tp = int((flagged & defect).sum())
        assert res["seg_f1"] == pytest.approx(2 * tp / (flagged.sum() + defect.sum()), abs=1e-12)
    # at the oracle's own threshold the two are equal
    res = evaluate(scores, labels, anomaly_maps=maps, masks=masks)
    again = evaluate(scores, labels, anomaly_maps=maps, masks=masks, pixel_threshold=res["p_f1max_threshold"])
    assert again["seg_f1"] == pytest.approx(again["seg_f1_max"], abs=1e-12)
    assert METRIC_KEYS[-2:] == ("seg_f1", "seg_f1_max")


def test_category_without_defect_pixels_has_no_seg_f1():
    assert np.isnan(seg_f1(MAPS, np.zeros_like(MASKS), 0.5))
    # two categories: "b" has anomalous labels but no defect pixel in its masks (like p_auroc: absent)
    maps = np.concatenate([MAPS, MAPS])
    masks = np.concatenate([MASKS, np.zeros_like(MASKS)])
    labels = np.concatenate([LABELS, LABELS])
    summary = evaluate_by_category(
        maps.reshape(6, -1).max(1),
        labels,
        ["a"] * 3 + ["b"] * 3,
        anomaly_maps=maps,
        masks=masks,
        pixel_thresholds={"a": 0.5, "b": 0.5},
    )
    assert summary["categories"]["a"]["seg_f1"] == 0.5
    assert "seg_f1" not in summary["categories"]["b"] and "p_auroc" not in summary["categories"]["b"]
    assert summary["mean"]["seg_f1"] == 0.5  # the mean over the categories that have it
    # each category uses its own threshold; a category without a threshold has no seg_f1 (but its oracle)
    split = evaluate_by_category(
        maps.reshape(6, -1).max(1),
        labels,
        ["a"] * 3 + ["c"] * 3,
        anomaly_maps=maps,
        masks=np.concatenate([MASKS, MASKS]),
        pixel_thresholds={"a": 0.5, "c": None},
    )
    assert split["categories"]["a"]["seg_f1"] == 0.5 and "seg_f1" not in split["categories"]["c"]
    assert split["categories"]["c"]["seg_f1_max"] == split["categories"]["c"]["p_f1max"]


def _pooled_f1_bounds(maps16: np.ndarray, masks: np.ndarray, threshold: float) -> tuple[float, float]:
    """The pooled F1 at ``threshold`` from float16 maps: pixels within float16 rounding of the
    threshold may fall on either side in the float32 maps the run evaluated, so (lowest, highest)."""
    values = maps16.astype(np.float64)
    slack = 2.0**-10 * max(abs(threshold), 2.0**-14)  # one float16 ulp, more than half of one
    sure, maybe = values >= threshold + slack, values >= threshold - slack
    defect = masks > 0.5
    n_defect = int(defect.sum())

    def f1(tp: int, fp: int) -> float:
        return 2 * tp / (tp + fp + n_defect) if tp else 0.0

    tp_lo, tp_hi = int((sure & defect).sum()), int((maybe & defect).sum())
    fp_lo, fp_hi = int((sure & ~defect).sum()), int((maybe & ~defect).sum())
    return f1(tp_lo, fp_hi), f1(tp_hi, fp_lo)


@pytest.mark.slow
def test_fit_reports_seg_f1_at_the_checkpoint_pixel_threshold(trained_checkpoint):
    """``minimaxad fit`` (no preset: every metric reported) writes categories.C.seg_f1: the pooled F1
    of the saved evaluation's maps at the checkpoint's calibrated pixel threshold for C."""
    run = trained_checkpoint.parent
    data = json.loads((run / "metrics.json").read_text())
    state = read_checkpoint(trained_checkpoint)
    with np.load(run / "evaluation.npz", allow_pickle=False) as saved:
        maps, masks, categories = saved["maps"], saved["masks"], saved["categories"]
        meta = json.loads(str(saved["meta"]))
    assert maps.shape[-1] == 64  # stored at the evaluated size, in float16
    for category in sorted(set(categories.tolist())):
        values = data["categories"][category]
        threshold = thresholds_for(state["thresholds"], category).pixel.value
        assert threshold is not None
        stored = meta["thresholds"].get("per_category", {}).get(category, meta["thresholds"])["pixel"]["value"]
        assert stored == threshold  # the threshold the report shows
        take = categories == category
        lo, hi = _pooled_f1_bounds(maps[take], masks[take], threshold)
        assert lo - 1e-12 <= values["seg_f1"] <= hi + 1e-12, (category, lo, values["seg_f1"], hi)
        assert values["seg_f1"] == pytest.approx(seg_f1(maps[take], masks[take], threshold), abs=0.02)
        assert values["seg_f1_max"] == values["p_f1max"] >= values["seg_f1"]
    assert data["mean"]["seg_f1"] == pytest.approx(
        np.mean([data["categories"][c]["seg_f1"] for c in data["categories"]])
    )
    csv_header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "seg_f1" in csv_header and "seg_f1_max" in csv_header
