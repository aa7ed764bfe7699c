"""Tests for minimaxad.reporting.plots (hand-written SVG) and the report's image-level curves,
which must be metrics.ranking's curves, drawn."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from minimaxad.metrics.ranking import auroc, average_precision, downsample_idx, pr_curve, roc_curve
from minimaxad.reporting.html import ReportItem, _roc_pr, write_report
from minimaxad.reporting.plots import Marker, ScoreGroup, Series, colorbar, histogram, line_plot, series_style


def _points(svg: str) -> list[np.ndarray]:
    """The (n, 2) SVG coordinates of each polyline."""
    return [
        np.array([p.split(",") for p in pts.split()], float) for pts in re.findall(r'<polyline points="([^"]*)"', svg)
    ]


def _tied_scores(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) + 0.3 * y, 1)  # many ties, some inside both classes
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_curves_are_ranking_curves(seed: int) -> None:
    y, s = _tied_scores(seed)
    res = _roc_pr(y, s)
    fpr, tpr, _ = roc_curve(s, y)
    assert np.array_equal(res["fpr"], fpr) and np.array_equal(res["tpr"], tpr)
    assert res["auroc"] == auroc(s, y) and res["ap"] == average_precision(s, y)
    # the PR step curve passes through pr_curve's points, from the highest threshold down to the
    # first one reaching full recall (pr_curve's closing (recall 0, precision 1) is not drawn)
    precision, recall, _ = pr_curve(s, y)
    first_full = int(np.flatnonzero(recall == 1.0)[-1])  # pr_curve's thresholds increase, its recall falls
    drawn = set(zip(res["recall"].tolist(), res["precision"].tolist()))
    expected = set(zip(recall[first_full:-1].tolist(), precision[first_full:-1].tolist()))
    assert expected <= drawn and res["recall"].max() == 1.0 and res["recall"].min() == 0.0
    # a step curve: each segment horizontal (precision held) or vertical (recall held)
    dx, dy = np.diff(res["recall"]), np.diff(res["precision"])
    assert np.all((dx == 0) | (dy == 0)) and np.all(dx >= 0)
    # its area is AP: precision p_i over the recall interval (r_{i-1}, r_i]
    assert float(np.sum(dx * res["precision"][1:])) == pytest.approx(res["ap"], abs=1e-12)


def test_roc_polyline_in_the_page_is_roc_curve(tmp_path: Path) -> None:
    y, s = _tied_scores(5, 40)
    items = [
        ReportItem(
            path=f"{i}.png",
            category="bottle",
            label=int(lab),
            score=float(sc),
            anomaly_map=np.zeros((4, 4), np.float32),
            image=None,
        )
        for i, (lab, sc) in enumerate(zip(y, s))
    ]
    page = write_report(tmp_path / "r.html", metrics={}, items=items, max_gallery=0).read_text(encoding="utf-8")
    curves = re.search(r'<section id="curves">(.*?)</section>', page, re.S).group(1)
    roc_drawn = _points(curves)[0]
    fpr, tpr, _ = roc_curve(s, y)
    # the ROC frame: 300 x 260 px with its top left corner at (58, 30)
    expected = np.round(np.c_[58 + 300 * fpr, 290 - 260 * tpr], 1)
    assert roc_drawn == pytest.approx(expected, abs=0.051)
    assert f"bottle (AUROC {auroc(s, y) * 100:.1f}%)" in curves
    assert f"bottle (AP {average_precision(s, y) * 100:.1f}%)" in curves


def test_long_curves_are_thinned_along_their_length() -> None:
    t = np.linspace(0.0, 1.0, 9000)
    svg = line_plot("T", "x", "y", [Series("steep", t, np.sqrt(t), "#111"), Series("short", [0, 1], [0, 1], "#222")])
    steep, short = _points(svg)
    keep = downsample_idx(t, np.sqrt(t), 2000)
    assert len(steep) == len(keep) <= 2000 and len(short) == 2
    assert tuple(steep[0]) == (58.0, 290.0) and tuple(steep[-1]) == (358.0, 30.0)  # both ends kept


def test_line_plot_clips_to_unit_square_and_draws_markers() -> None:
    svg = line_plot(
        "T <&>",
        "x",
        "y",
        [Series("a", [-0.5, 0.5, 2.0], [0.5, 1.5, -1.0], "#123456", "6 3", 2.4)],
        diagonal=True,
        markers=[Marker(0.25, 0.75, "#123456", "op <1>")],
    )
    (pts,) = _points(svg)
    assert pts.tolist() == [[58.0, 160.0], [208.0, 30.0], [358.0, 290.0]]
    assert 'stroke-dasharray="6 3"' in svg and 'stroke-width="2.4"' in svg and 'class="chance"' in svg
    assert '<circle cx="133.0" cy="95.0"' in svg and "op &lt;1&gt;" in svg and "T &lt;&amp;&gt;" in svg
    assert "operating point at the image threshold" in svg


def test_histogram_counts_finite_scores_and_shows_threshold() -> None:
    groups = [
        ScoreGroup("normal", np.array([0.1, 0.2, 0.2, np.nan]), "#1f77b4"),
        ScoreGroup("anomalous", np.array([0.8, np.inf]), "#d62728"),
    ]
    svg = histogram("Scores", groups, threshold=0.5)
    assert "normal (n=3)" in svg and "anomalous (n=1)" in svg
    assert svg.count('class="thr"') == 1 and "threshold 0.5" in svg
    assert sum(int(n) for n in re.findall(r"</?title>[^<]*?: (\d+) in \[", svg)) == 4


def test_colorbar_and_series_style() -> None:
    svg = colorbar("jet", 0.0, 2.0)
    assert svg.count("<stop ") == 17 and ">0<" in svg and ">1<" in svg and ">2<" in svg
    assert series_style(0) == ("#1f77b4", "") and series_style(10) == ("#1f77b4", "6 3")
