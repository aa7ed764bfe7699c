"""Metrics: the authors' fixture, scikit-learn on random inputs, literal slow loops, edge cases."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from minimaxad import metrics
from minimaxad.metrics import (
    aupro,
    aupro_200,
    auroc,
    average_precision,
    bootstrap_ci,
    evaluate,
    f1_max,
    label_regions,
    pr_curve,
    ranking,
    roc_curve,
)
from minimaxad.metrics.bootstrap import batched_metrics

skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference (pip install -e .[test])")

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


# ---------------------------------------------------------------------------
# slow literal references
# ---------------------------------------------------------------------------


def authors_aupro_200(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200) -> float:
    """The authors' compute_pro, literally (scipy labelling, 8-connectivity, as skimage)."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / num_th
    fprs, pros_mean = [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th] = 0
        binary_amaps[amaps > th] = 1
        pros = []
        for binary_amap, mask in zip(binary_amaps, masks):
            lab, n = ndimage.label(mask, np.ones((3, 3), int))
            for i in range(1, n + 1):
                region = lab == i
                pros.append(binary_amap[region].sum() / region.sum())
        inverse_masks = 1 - masks
        fprs.append(np.logical_and(inverse_masks, binary_amaps).sum() / inverse_masks.sum())
        pros_mean.append(np.mean(pros))
    fprs, pros_mean = np.array(fprs), np.array(pros_mean)
    keep = fprs < 0.3
    return skm.auc(fprs[keep] / fprs[keep].max(), pros_mean[keep])


def mvtec_aupro(masks: np.ndarray, amaps: np.ndarray, limit: float) -> float:
    """MVTec AD's official evaluation (compute_pro + trapezoid with x_max), literally."""
    n_ok, n_regions = 0, 0
    fp_change = np.zeros(amaps.shape)
    pro_change = np.zeros(amaps.shape)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, np.ones((3, 3), int))
        n_regions += n
        ok = lab == 0
        n_ok += ok.sum()
        fp_change[i][ok] = 1
        for k in range(1, n + 1):
            pro_change[i][lab == k] = 1.0 / (lab == k).sum()
    flat = amaps.ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    s = flat[order]
    fprs = np.cumsum(fp_change.ravel()[order]) / n_ok
    pros = np.cumsum(pro_change.ravel()[order]) / n_regions
    keep = np.append(np.diff(s) != 0, True)
    x = np.r_[0.0, np.clip(fprs[keep], None, 1)]
    y = np.r_[0.0, np.clip(pros[keep], None, 1)]
    correction = 0.0
    if limit not in x:
        ins = np.searchsorted(x, limit, side="right")
        y_i = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_i + y[ins - 1]) * (limit - x[ins - 1])
    sel = x <= limit
    x, y = x[sel], y[sel]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / limit


def sk_f1max(y, s):
    p, r, t = skm.precision_recall_curve(y, s)
    f = (2 * p * r / np.where(p + r > 0, p + r, 1))[:-1]
    k = int(np.argmax(f))
    return f[k], t[k]


def random_masks(rng, n, h, w, p_anom=0.7, max_regions=3):
    """Ellipses and boxes, some at the border, some diagonal-touching, some images empty."""
    masks = np.zeros((n, h, w), dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        if rng.random() > p_anom:
            continue
        for _ in range(rng.integers(1, max_regions + 1)):
            cy, cx = rng.integers(-2, h + 2), rng.integers(-2, w + 2)  # may cross the border
            a, b = rng.uniform(1, h / 4), rng.uniform(1, w / 4)
            masks[i] |= ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        if rng.random() < 0.3:  # two pixels touching only by a corner: one region (8-conn.)
            y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
            masks[i, y0, x0] = masks[i, y0 + 1, x0 + 1] = True
    masks[0, 0, :3] = True  # a region on the border for sure
    return masks


def random_maps(rng, masks, levels=None, dtype=np.float32):
    maps = rng.normal(0, 1, masks.shape) + masks * rng.uniform(0.2, 2.0)
    maps = ndimage.uniform_filter(maps, size=(1, 3, 3))
    if levels:  # heavy ties, also across classes
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype)


# ---------------------------------------------------------------------------
# the authors' fixture
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation_fixture():
    path = REFERENCE / "evaluation.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (the ../shared folder beside the repository)")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("variant", ["results_top1pct_mean", "results_max_pixel"])
def test_fixture_all_metrics(evaluation_fixture, variant):
    d = evaluation_fixture
    ref = d[variant]
    res = evaluate(ref["image_scores"], d["labels"], anomaly_maps=d["anomaly_map_smoothed"], masks=d["masks"])
    for key in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max"):
        assert res[key] == pytest.approx(ref[key], abs=1e-6), key
    assert res["aupro_200"] == pytest.approx(ref["aupro_200_thresholds"], abs=1e-4)
    assert res["aupro"] == pytest.approx(ref["aupro_200_thresholds"], abs=5e-3)
    assert all(isinstance(res[k], float) for k in metrics.METRIC_KEYS if k != "seg_f1")  # seg_f1: needs a threshold
    assert "seg_f1" not in res and res["seg_f1_max"] == res["p_f1max"]


def test_fixture_numpy_and_channel_free_inputs_agree(evaluation_fixture):
    d = evaluation_fixture
    ref = d["results_top1pct_mean"]
    a = evaluate(ref["image_scores"], d["labels"], anomaly_maps=d["anomaly_map_smoothed"], masks=d["masks"])
    b = evaluate(
        ref["image_scores"].numpy(),
        d["labels"].numpy().tolist(),
        anomaly_maps=d["anomaly_map_smoothed"][:, 0].numpy(),
        masks=d["masks"][:, 0].numpy() * 255,
    )
    assert a == b
    assert aupro_200(d["anomaly_map_smoothed"], d["masks"]) == a["aupro_200"]
    assert aupro(d["anomaly_map_smoothed"], d["masks"]) == a["aupro"]


def test_fixture_aupro_200_equals_literal_loop(evaluation_fixture):
    d = evaluation_fixture
    amaps = d["anomaly_map_smoothed"][:, 0].numpy()
    masks = (d["masks"][:, 0].numpy() > 0.5).astype(np.float32)
    assert aupro_200(amaps, masks) == pytest.approx(authors_aupro_200(masks, amaps), abs=1e-12)


# ---------------------------------------------------------------------------
# scikit-learn on random inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 4, 20])
def test_image_metrics_match_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    y = rng.random(n) < rng.uniform(0.05, 0.95)
    y[0], y[1] = True, False
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if levels:
        s = np.round(s * levels / 4) / levels
    dtype = np.float32 if seed % 2 else np.float64
    s = s.astype(dtype)
    assert auroc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    f, t = f1_max(torch.from_numpy(s), torch.from_numpy(y))
    f_ref, t_ref = sk_f1max(y, s)
    assert f == pytest.approx(f_ref, abs=1e-12)
    # the threshold reaches that F1 (exact ties may pick another threshold than sklearn's rounding)
    p, r, thr = skm.precision_recall_curve(y, s)
    k = int(np.flatnonzero(thr == t)[0])
    assert 2 * p[k] * r[k] / (p[k] + r[k]) == pytest.approx(f_ref, abs=1e-12)
    assert t <= t_ref  # ties: the lowest threshold


@pytest.mark.parametrize("n_pos,n_neg", [(1, 50), (50, 1), (1, 1), (7, 3)])
def test_all_equal_scores_and_single_items(n_pos, n_neg):
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    for s in (np.full(len(y), 0.25), np.random.default_rng(n_pos).random(len(y))):
        assert auroc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert average_precision(s, y) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        assert f1_max(s, y)[0] == pytest.approx(sk_f1max(y, s)[0], abs=1e-12)
    s = np.full(len(y), 0.25)
    assert auroc(s, y) == 0.5
    assert average_precision(s, y) == pytest.approx(n_pos / (n_pos + n_neg))
    assert f1_max(s, y) == (pytest.approx(2 * n_pos / (2 * n_pos + n_neg)), 0.25)


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, 10, 24, 20)
    maps = random_maps(rng, masks, levels=[None, 3, 16, None][seed], dtype=[np.float32, np.float64][seed % 2])
    labels = masks.reshape(10, -1).any(1).astype(int)
    labels[:2] = [0, 1]
    scores = maps.reshape(10, -1).max(1)
    res = evaluate(scores, labels, anomaly_maps=maps[:, None], masks=masks[:, None].astype(np.float32))
    gt, pr = masks.ravel(), maps.ravel()
    assert res["p_auroc"] == pytest.approx(skm.roc_auc_score(gt, pr), abs=1e-12)
    assert res["p_ap"] == pytest.approx(skm.average_precision_score(gt, pr), abs=1e-12)
    f_ref, t_ref = sk_f1max(gt, pr)
    assert res["p_f1max"] == pytest.approx(f_ref, abs=1e-12)
    assert res["p_f1max_threshold"] == t_ref
    assert res["i_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_parallel_chunked_sort_is_exact(monkeypatch):
    # force the multi-chunk path (normally > 4 M negatives) on a small input
    monkeypatch.setattr(ranking, "_PARALLEL_SORT_MIN", 10)
    monkeypatch.setattr(ranking, "_n_threads", lambda: 3)
    rng = np.random.default_rng(7)
    s = np.round(rng.normal(size=5000), 1).astype(np.float32)
    y = rng.random(5000) < 0.1
    r = ranking.rank_scores(torch.from_numpy(s), torch.from_numpy(y))
    assert len(r.neg) == 3
    assert auroc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert f1_max(s, y)[0] == pytest.approx(sk_f1max(y, s)[0], abs=1e-12)


@pytest.mark.parametrize("levels", [None, 5])
def test_curves_match_sklearn(levels):
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    s = rng.normal(size=400) + y
    if levels:
        s = np.round(s * levels) / levels
    fpr, tpr, thr = roc_curve(s, y)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2, atol=1e-15)
    np.testing.assert_allclose(tpr, t2, atol=1e-15)
    np.testing.assert_array_equal(thr, th2)
    p, r, t = pr_curve(s, y)
    p2, r2, t2 = skm.precision_recall_curve(y, s)
    np.testing.assert_allclose(p, p2, atol=1e-15)
    np.testing.assert_allclose(r, r2, atol=1e-15)
    np.testing.assert_array_equal(t, t2)
    fpr, tpr, thr = roc_curve(s, y, max_points=50)
    assert len(fpr) <= 51 and (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_pixel_roc_polyline_area_is_auroc():
    rng = np.random.default_rng(11)
    s = torch.from_numpy(np.round(rng.normal(size=20000), 1))
    y = torch.from_numpy(rng.random(20000) < 0.2)
    r = ranking.rank_scores(s, y)
    t = ranking.pos_table(r)
    c = ranking.curves_from(r, t, None)
    area = np.trapezoid(c["roc"]["tpr"], c["roc"]["fpr"])
    assert area == pytest.approx(ranking.auroc_from(r, t), abs=1e-12)
    # the PR points are sklearn's curve at the positive values
    p2, r2, t2 = skm.precision_recall_curve(y.numpy(), s.numpy())
    sel = np.isin(t2, c["pr"]["thresholds"])
    np.testing.assert_allclose(c["pr"]["precision"][:-1], p2[:-1][sel], atol=1e-14)


# ---------------------------------------------------------------------------
# AUPRO: literal loops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_aupro_200_matches_literal_authors_loop(seed):
    rng = np.random.default_rng(100 + seed)
    masks = random_masks(rng, 6, 20, 24)
    maps = random_maps(
        rng, masks, levels=[None, 8, None, 30, None][seed], dtype=np.float64 if seed == 2 else np.float32
    )
    ref = authors_aupro_200(masks.astype(np.float32), maps)
    assert aupro_200(maps, masks) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_exact_aupro_matches_mvtec_reference(seed, limit):
    rng = np.random.default_rng(200 + seed)
    masks = random_masks(rng, 6, 18, 22)
    maps = random_maps(rng, masks, levels=[None, 2, 6, 25, None][seed], dtype=np.float64 if seed == 4 else np.float32)
    assert aupro(maps, masks, integration_limit=limit) == pytest.approx(mvtec_aupro(masks, maps, limit), abs=1e-12)


def test_aupro_forms_close_on_smooth_maps():
    rng = np.random.default_rng(5)
    masks = random_masks(rng, 12, 40, 40)
    maps = random_maps(rng, masks)
    assert abs(aupro(maps, masks) - aupro_200(maps, masks)) < 5e-3


def test_label_regions_matches_flood_fill():
    rng = np.random.default_rng(9)
    masks = rng.random((5, 9, 11)) < 0.35
    region, areas = label_regions(masks)
    # independent 8-connected flood fill
    expected = []
    for m in masks:
        seen = np.zeros_like(m, dtype=int)
        comp = 0
        for y0, x0 in zip(*np.nonzero(m)):
            if seen[y0, x0]:
                continue
            comp += 1
            stack = [(y0, x0)]
            seen[y0, x0] = comp
            while stack:
                y, x = stack.pop()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if 0 <= v < m.shape[0] and 0 <= u < m.shape[1] and m[v, u] and not seen[v, u]:
                            seen[v, u] = comp
                            stack.append((v, u))
        expected.append(seen[m])
    # same partition (ids per image are numbered in scan order by both)
    offsets = np.cumsum([0] + [e.max() if e.size else 0 for e in expected[:-1]])
    np.testing.assert_array_equal(region, np.concatenate([e - 1 + o for e, o in zip(expected, offsets)]))
    np.testing.assert_array_equal(areas, np.bincount(region))


def test_constant_maps_exact_aupro_and_undefined_aupro_200():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 2:4, 2:4] = True
    maps = np.full((3, 8, 8), 0.5, dtype=np.float32)
    # one diagonal from (0, 0) to (1, 1): area 0.3^2 / 2, divided by 0.3
    assert aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    with pytest.warns(RuntimeWarning, match="aupro_200 is undefined"):
        assert math.isnan(aupro_200(maps, masks))


# ---------------------------------------------------------------------------
# evaluate: structure, degenerate input
# ---------------------------------------------------------------------------


def _small_set(seed=0, n=8):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, n, 16, 16)
    masks[0] = False
    masks[1, 5:8, 5:8] = True
    labels = masks.reshape(n, -1).any(1).astype(int)
    maps = random_maps(rng, masks)
    return maps.reshape(n, -1).max(1), labels, maps, masks


def test_evaluate_keys_and_options():
    s, y, maps, masks = _small_set()
    img = evaluate(s, y)
    assert set(img) == {"i_auroc", "i_ap", "i_f1max", "i_f1max_threshold"}
    full = evaluate(s, y, anomaly_maps=maps, masks=masks)
    pixel = {"p_auroc", "p_ap", "p_f1max", "p_f1max_threshold", "aupro", "aupro_200", "seg_f1_max"}
    assert set(full) == set(img) | pixel
    assert "aupro" not in evaluate(s, y, anomaly_maps=maps, masks=masks, aupro_exact=False)
    # maps without masks: image metrics only
    assert set(evaluate(s, y, anomaly_maps=maps)) == set(img)
    other = evaluate(s, y, anomaly_maps=maps, masks=masks, pro_integration_limit=0.1)
    assert other["aupro"] == pytest.approx(aupro(maps, masks, 0.1))
    assert other["aupro_200"] == pytest.approx(aupro_200(maps, masks, 0.1))


def test_empty_masks_give_no_pixel_metrics():
    s, y, maps, _ = _small_set()
    res = evaluate(s, y, anomaly_maps=maps, masks=np.zeros_like(maps))
    assert not any(k.startswith("p_") or k.startswith("aupro") for k in res)
    with pytest.raises(ValueError, match="no anomalous pixel"):
        aupro(maps, np.zeros_like(maps))


@pytest.mark.parametrize(
    "case",
    [
        "one_class",
        "nan_score",
        "inf_score",
        "nan_map",
        "len_mismatch",
        "mask_shape",
        "map_count",
        "bad_labels",
        "all_positive_mask",
        "bad_map_shape",
    ],
)
def test_degenerate_inputs_raise(case):
    s, y, maps, masks = _small_set()
    kw = {"anomaly_maps": maps, "masks": masks}
    if case == "one_class":
        y = np.ones_like(y)
        match = "no normal"
    elif case == "nan_score":
        s = s.copy()
        s[3] = np.nan
        match = "NaN"
    elif case == "inf_score":
        s = s.copy()
        s[3] = np.inf
        match = "NaN or infinite"
    elif case == "nan_map":
        maps = maps.copy()
        maps[2, 3, 3] = np.nan
        kw["anomaly_maps"] = maps
        match = "anomaly_maps contain NaN"
    elif case == "len_mismatch":
        y = y[:-1]
        match = "same items"
    elif case == "mask_shape":
        kw["masks"] = masks[:, :-1]
        match = "resize the masks"
    elif case == "map_count":
        kw = {"anomaly_maps": maps[:-1], "masks": masks[:-1]}
        match = "one map per test item"
    elif case == "bad_labels":
        y = y * 2
        match = "only 0"
    elif case == "all_positive_mask":
        kw["masks"] = np.ones_like(masks)
        match = "every pixel anomalous"
    else:
        kw["anomaly_maps"] = maps[:, None, None]
        match = r"\(N, H, W\)"
    with pytest.raises(ValueError, match=match):
        evaluate(s, y, **kw)


def test_single_anomalous_image_and_pixel():
    s, y, maps, masks = _small_set()
    masks = np.zeros_like(masks)
    masks[4, 0, 15] = True  # one pixel, in a corner
    y = np.zeros_like(y)
    y[4] = 1
    res = evaluate(s, y, anomaly_maps=maps, masks=masks)
    assert res["i_auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert res["p_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()))
    assert res["aupro"] == pytest.approx(mvtec_aupro(masks, maps, 0.3), abs=1e-12)
    assert res["aupro_200"] == pytest.approx(authors_aupro_200(masks.astype(np.float32), maps), abs=1e-12)


def test_half_precision_and_grad_tensors():
    s, y, maps, masks = _small_set()
    t = torch.from_numpy(maps).requires_grad_(True)
    a = evaluate(torch.from_numpy(s), torch.from_numpy(y), anomaly_maps=t, masks=torch.from_numpy(masks))
    assert a["p_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    h = evaluate(s, y, anomaly_maps=torch.from_numpy(maps).half(), masks=masks)
    ref = skm.roc_auc_score(masks.ravel(), torch.from_numpy(maps).half().float().numpy().ravel())
    assert h["p_auroc"] == pytest.approx(ref, abs=1e-12)


def test_return_curves():
    s, y, maps, masks = _small_set(n=40)
    res = evaluate(s, y, anomaly_maps=maps, masks=masks, return_curves=True)
    c = res["curves"]
    roc, pr = c["image"]["roc"], c["image"]["pr"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(res["i_auroc"], abs=1e-12)
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"]) + 1
    proc = c["pixel"]["roc"]
    assert len(proc["fpr"]) <= 502 and proc["fpr"][0] == 0 and proc["tpr"][-1] == 1
    assert np.trapezoid(proc["tpr"], proc["fpr"]) == pytest.approx(res["p_auroc"], abs=2e-3)
    assert set(c["pixel"]["pro"]) == {"fpr", "pro", "thresholds"} and len(c["pixel"]["pro"]["fpr"]) in (200, 201)


# ---------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------


def test_batched_metrics_are_exact_per_row():
    rng = np.random.default_rng(4)
    s = np.round(rng.normal(size=(30, 60)), 1)
    y = rng.random((30, 60)) < 0.4
    y[:, 0], y[:, 1] = True, False
    out = batched_metrics(s, y)
    for i in range(30):
        assert out["auroc"][i] == pytest.approx(skm.roc_auc_score(y[i], s[i]), abs=1e-12)
        assert out["ap"][i] == pytest.approx(skm.average_precision_score(y[i], s[i]), abs=1e-12)
        assert out["f1max"][i] == pytest.approx(sk_f1max(y[i], s[i])[0], abs=1e-12)


def test_bootstrap_ci_seeded_and_sensible():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.6
    s = rng.normal(size=300) + 1.2 * y
    a = bootstrap_ci(s, y, n_boot=300, seed=1)
    assert a == bootstrap_ci(s, y, n_boot=300, seed=1)
    assert a != bootstrap_ci(s, y, n_boot=300, seed=2)
    for name, point in (("auroc", auroc(s, y)), ("ap", average_precision(s, y)), ("f1max", f1_max(s, y)[0])):
        lo, hi = a[name]
        assert lo < point < hi and hi - lo < 0.25
    # the AUROC interval is close to the normal approximation (Hanley-McNeil)
    auc_, p, n = auroc(s, y), y.sum(), (~y).sum()
    q1, q2 = auc_ / (2 - auc_), 2 * auc_**2 / (1 + auc_)
    se = math.sqrt((auc_ * (1 - auc_) + (p - 1) * (q1 - auc_**2) + (n - 1) * (q2 - auc_**2)) / (p * n))
    assert a["auroc"][1] - a["auroc"][0] == pytest.approx(2 * 1.96 * se, rel=0.25)
    b = bootstrap_ci(s, y, n_boot=200, seed=1, stratified=False, metrics=("auroc",))
    assert set(b) == {"auroc"}
    res = evaluate(s, y, bootstrap=200, seed=3)
    assert res["i_auroc_ci"] == bootstrap_ci(s, y, n_boot=200, seed=3)["auroc"]
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(s, y, n_boot=1)


# ---------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    s, y, maps, masks = _small_set(n=30)
    cpu = evaluate(s, y, anomaly_maps=maps, masks=masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpu = evaluate(s, y, anomaly_maps=torch.from_numpy(maps).cuda(), masks=torch.from_numpy(masks).cuda())
    for k, v in cpu.items():
        assert gpu[k] == pytest.approx(v, abs=1e-12), k
