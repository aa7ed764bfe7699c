"""Per-category aggregation, metrics.json / metrics.csv, the printed table."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from minimaxad.metrics import evaluate
from minimaxad.reporting.results import evaluate_by_category, format_table, summarize, write_metrics


def _category_data(seed: int, n: int, anomalous_pixels: bool = True):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    masks = np.zeros((n, 12, 12), dtype=bool)
    if anomalous_pixels:
        for i in np.flatnonzero(labels):
            y, x = rng.integers(0, 9, 2)
            masks[i, y : y + 3, x : x + 3] = True
    maps = (rng.normal(size=masks.shape) + 2 * masks).astype(np.float32)
    scores = maps.reshape(n, -1).max(1) + rng.normal(0, 0.5, n)
    return scores, labels, maps, masks


@pytest.fixture
def three_categories():
    parts = {"bottle": _category_data(0, 10), "cable": _category_data(1, 14), "screw": _category_data(2, 8)}
    scores = np.concatenate([p[0] for p in parts.values()])
    labels = np.concatenate([p[1] for p in parts.values()])
    maps = np.concatenate([p[2] for p in parts.values()])
    masks = np.concatenate([p[3] for p in parts.values()])
    cats = [name for name, p in parts.items() for _ in range(len(p[0]))]
    return parts, scores, labels, maps, masks, cats


def test_summarize_means_over_categories_that_have_the_metric():
    per = {
        "a": {"i_auroc": 0.9, "p_auroc": 0.8, "i_f1max_threshold": 1.5, "i_auroc_ci": (0.85, 0.95), "curves": {}},
        "b": {"i_auroc": 0.7},
        "c": {"i_auroc": 0.8, "p_auroc": 0.6, "aupro_200": float("nan")},
    }
    s = summarize(per)
    assert list(s["categories"]) == ["a", "b", "c"]
    assert s["categories"]["a"] == {"i_auroc": 0.9, "p_auroc": 0.8, "i_auroc_ci": (0.85, 0.95)}
    assert s["mean"]["i_auroc"] == pytest.approx(0.8)
    assert s["mean"]["p_auroc"] == pytest.approx(0.7)  # only a and c have it
    assert math.isnan(s["mean"]["aupro_200"])  # a NaN is not hidden
    assert "i_auroc_ci" not in s["mean"] and "aupro" not in s["mean"]


def test_evaluate_by_category_equals_evaluate_per_subset(three_categories):
    parts, scores, labels, maps, masks, cats = three_categories
    s = evaluate_by_category(
        scores,
        labels,
        cats,
        anomaly_maps=torch.from_numpy(maps)[:, None],
        masks=torch.from_numpy(masks)[:, None],
        bootstrap=50,
        seed=4,
    )
    for name, (sc, lb, mp, mk) in parts.items():
        ref = evaluate(sc, lb, anomaly_maps=mp, masks=mk, bootstrap=50, seed=4)
        for k in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro", "aupro_200", "i_auroc_ci"):
            assert s["categories"][name][k] == pytest.approx(ref[k], abs=1e-12), (name, k)
    assert s["mean"]["p_ap"] == pytest.approx(np.mean([s["categories"][c]["p_ap"] for c in parts]))


def test_evaluate_by_category_mask_availability_and_order(three_categories):
    parts, scores, labels, maps, masks, cats = three_categories
    has_mask = np.array([c != "cable" for c in cats])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(cats))  # interleaved categories (indexing, not slicing)
    s = evaluate_by_category(
        scores[perm],
        labels[perm],
        [cats[i] for i in perm],
        anomaly_maps=maps[perm],
        masks=masks[perm],
        has_mask=has_mask[perm],
    )
    assert "p_auroc" not in s["categories"]["cable"] and "p_auroc" in s["categories"]["bottle"]
    ref = evaluate(*parts["screw"][:2], anomaly_maps=parts["screw"][2], masks=parts["screw"][3])
    assert s["categories"]["screw"]["aupro"] == pytest.approx(ref["aupro"], abs=1e-12)
    s2 = evaluate_by_category(scores, labels, cats, anomaly_maps=maps, masks=masks, has_mask={"bottle": True})
    assert [("p_auroc" in r) for r in s2["categories"].values()] == [True, False, False]
    s3 = evaluate_by_category(scores, labels, cats, return_curves=True)
    assert set(s3["curves"]) == set(parts) and "p_auroc" not in s3["mean"]
    with pytest.raises(ValueError, match="one category name per test item"):
        evaluate_by_category(scores, labels, cats[:-1])


def test_category_without_anomalous_pixels_has_no_pixel_metrics():
    a, b = _category_data(0, 10), _category_data(1, 10, anomalous_pixels=False)
    s = evaluate_by_category(
        np.r_[a[0], b[0]],
        np.r_[a[1], b[1]],
        ["x"] * 10 + ["y"] * 10,
        anomaly_maps=np.concatenate([a[2], b[2]]),
        masks=np.concatenate([a[3], b[3]]),
    )
    assert "p_auroc" not in s["categories"]["y"]
    assert s["mean"]["p_auroc"] == s["categories"]["x"]["p_auroc"]


def test_write_metrics_json_and_csv(tmp_path):
    summary = summarize(
        {
            "bottle": {"i_auroc": 1.0, "p_auroc": 0.98, "i_auroc_ci": (0.99, 1.0)},
            "grid": {"i_auroc": 0.95, "aupro_200": float("nan")},
        }
    )
    out = tmp_path / "run" / "eval"
    json_path, csv_path = write_metrics(summary, out)
    assert (json_path.name, csv_path.name) == ("metrics.json", "metrics.csv")
    doc = json.loads(json_path.read_text())
    assert doc["categories"]["bottle"]["i_auroc_ci"] == [0.99, 1.0]
    assert doc["categories"]["grid"]["aupro_200"] is None  # NaN is not JSON
    assert doc["mean"]["i_auroc"] == pytest.approx(0.975)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["category"] for r in rows] == ["bottle", "grid", "mean"]
    assert list(rows[0]) == ["category", "i_auroc", "i_auroc_ci_lo", "i_auroc_ci_hi", "p_auroc", "aupro_200"]
    assert rows[0]["p_auroc"] == "0.98" and rows[1]["p_auroc"] == "" and rows[1]["i_auroc_ci_lo"] == ""
    assert float(rows[2]["i_auroc"]) == pytest.approx(0.975) and rows[2]["i_auroc_ci_lo"] == ""
    # rewriting replaces the files and leaves no temporary file behind
    write_metrics(summarize({"only": {"i_auroc": 0.5}}), out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]
    assert list(json.loads(json_path.read_text())["categories"]) == ["only"]


def test_format_table_percent_one_decimal():
    summary = summarize({"bottle": {"i_auroc": 1.0, "p_auroc": 0.98765}, "transistor": {"i_auroc": 0.9512}})
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["category", "I-AUROC", "P-AUROC"]
    assert lines[2].split() == ["bottle", "100.0", "98.8"]
    assert lines[3].split() == ["transistor", "95.1", "-"]
    assert lines[-1].split() == ["mean", "97.6", "98.8"]
    assert len({len(line) for line in lines}) == 1  # fixed width


def test_seg_f1_columns_in_files_and_table(tmp_path):
    from minimaxad.reporting.results import DEPLOYMENT_KEYS, METRIC_DESCRIPTIONS

    per_category = {
        "a": {"i_auroc": 0.9, "p_f1max": 0.6, "seg_f1": 0.4, "seg_f1_max": 0.6, "seg_f1_threshold": 0.3},
        "b": {"i_auroc": 0.8},  # no defect pixel: no pixel metric, no seg_f1
    }
    summary = summarize(per_category)
    assert summary["categories"]["a"]["seg_f1"] == 0.4 and "seg_f1_threshold" not in summary["categories"]["a"]
    assert summary["mean"]["seg_f1"] == 0.4 and summary["mean"]["seg_f1_max"] == 0.6
    assert "seg_f1" not in summarize(per_category, keys=("i_auroc", "p_f1max"))["mean"]  # a paper protocol's keys
    json_path, csv_path = write_metrics(summary, tmp_path)
    assert json.loads(json_path.read_text())["categories"]["a"]["seg_f1"] == 0.4
    header, row_a, row_b, _ = csv_path.read_text().splitlines()
    assert header.split(",")[-2:] == ["seg_f1", "seg_f1_max"] and row_b.endswith(",,")
    table = format_table(summary)
    assert "SegF1" in table and "SegF1max" in table
    assert set(DEPLOYMENT_KEYS) == set(METRIC_DESCRIPTIONS) and "oracle" in METRIC_DESCRIPTIONS["seg_f1_max"]
