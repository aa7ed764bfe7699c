"""Tests for minimaxad.reporting.html.write_report (self-contained HTML)."""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minimaxad import __version__
from minimaxad.reporting.html import ReportItem, _roc_pr, write_report
from tests.browser import CHROME

WEIRD = "we<ir&d>.png"  # a real file name with HTML special characters
THR = 0.5

# (name, category, label, score, has_mask); expected gallery order with THR = 0.5:
SPEC = [
    ("b_miss_low.png", "bottle", 1, 0.10, True),  # 1 miss (lowest score first)
    ("s_miss.png", "screw", 1, 0.20, True),  # 2 miss
    ("b_miss.png", "bottle", 1, 0.30, True),  # 3 miss
    ("b_fa_high.png", "bottle", 0, 0.90, False),  # 4 false alarm (highest score first)
    ("s_fa.png", "screw", 0, 0.60, False),  # 5 false alarm
    (WEIRD, "screw", 0, 0.45, False),  # 6 correct, 0.05 from the threshold
    ("b_norm.png", "bottle", 0, 0.25, False),  # 7 correct, 0.25 away
    ("b_anom.png", "bottle", 1, 0.80, True),  # 8 correct, 0.30 away
    ("b_norm2.png", "bottle", 0, 0.10, False),  # 9 correct, 0.40 away
    ("s_anom.png", "screw", 1, 0.95, False),  # 10 correct, 0.45 away (anomalous, no mask)
    ("s_norm.png", "screw", 0, 0.02, False),  # 11 correct, 0.48 away
    ("broken.png", "screw", -1, 0.70, False),  # 12 unknown label, unreadable file
]
EXPECTED_ORDER = [s[0] for s in SPEC]

METRICS = {
    "categories": {
        "bottle": {
            "i_auroc": 0.973,
            "i_ap": 0.951,
            "i_f1max": 0.9,
            "p_auroc": 0.9812,
            "p_ap": 0.604,
            "p_f1max": 0.553,
            "aupro": 0.914,
            "i_auroc_ci": [0.951, 0.99],
        },
        "screw": {"i_auroc": 0.8567, "i_ap": 0.8, "i_f1max": 0.77},  # no pixel metrics
    },
    "mean": {"i_auroc": 0.91485, "i_ap": 0.876, "i_f1max": 0.835},
}
NOTES = {
    "image": "99th percentile of 20 held-out normal images (calibrated at the end of training)",
    "pixel": "max of held-out normal maps <p99>",
}
CONFIG = {
    "model": {"backbone": "unireplknet_n", "image_size": 256},
    "epochs": 10,
    "lr": 0.001,
    "categories": ["bottle", "screw"],
}


def _make_items(root: Path) -> list[ReportItem]:
    rng = np.random.default_rng(0)
    items = []
    for k, (name, cat, label, score, has_mask) in enumerate(SPEC):
        path = root / cat / name
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = (48, 32) if cat == "screw" else (40, 56)
        amap = (rng.random((32, 32)) * 0.3).astype(np.float32)
        if label == 1:
            amap[8:16, 10:20] += 0.7
        if name == "broken.png":
            path.write_bytes(b"this is not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        mask = None
        if has_mask:
            if k % 2:  # ground truth at network resolution
                mask = np.zeros((32, 32), bool)
                mask[8:16, 10:20] = True
            else:  # ground truth at the original photo size
                mask = np.zeros((h, w), bool)
                mask[h // 4 : h // 2, w // 3 : 2 * w // 3] = True
        # half of the photos are given in memory, the others loaded from disk
        image = Image.open(path).convert("RGB") if (k % 2 and name != "broken.png") else None
        items.append(
            ReportItem(path=str(path), category=cat, label=label, score=score, anomaly_map=amap, mask=mask, image=image)
        )
    return items


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[ReportItem]]:
    root = tmp_path_factory.mktemp("report")
    items = _make_items(root / "data")
    out = write_report(
        root / "out" / "report.html",
        metrics=METRICS,
        items=items,
        image_threshold=THR,
        pixel_threshold=0.6,
        threshold_notes=NOTES,
        title="Report <QA> & co",
        config=CONFIG,
        max_gallery=60,
    )
    return out, out.read_text(encoding="utf-8"), items


def _gallery(page: str) -> str:
    m = re.search(r'<section id="gallery">(.*?)</section>', page, re.S)
    assert m, "gallery section missing"
    return m.group(1)


def _gallery_names(page: str) -> list[str]:
    return [html.unescape(n) for n in re.findall(r'<div class="fname"[^>]*>(.*?)</div>', _gallery(page))]


# --------------------------------------------------------------------------- content


def test_writes_single_self_contained_file(report) -> None:
    out, page, _ = report
    assert out.is_file() and out.name == "report.html"
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    for attr, value in re.findall(r'\b(src|href)\s*=\s*["\']([^"\']*)', page, re.I):
        assert value.startswith("data:") or (attr.lower() == "href" and value.startswith("#")), (attr, value[:60])
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)  # only url(#gradient) references
    assert "@import" not in page and "<script" not in page.lower() and "<iframe" not in page.lower()
    assert len(page) < 600_000


def test_metrics_table(report) -> None:
    _, page, _ = report
    for txt in (
        "97.3",
        "95.1",
        "90.0",
        "98.1",
        "60.4",
        "55.3",
        "91.4",
        "85.7",
        "80.0",
        "77.0",
        "91.5",
        "87.6",
        "83.5",
        "[95.1, 99.0]",
    ):
        assert txt in page, txt
    metrics = re.search(r'<section id="metrics">(.*?)</section>', page, re.S).group(1)
    assert "—" in metrics  # screw has no pixel metrics
    assert "AUPRO" in metrics and "mean" in metrics


def test_categories_title_version_config(report) -> None:
    _, page, _ = report
    assert "bottle" in page and "screw" in page
    assert "Report &lt;QA&gt; &amp; co" in page and "Report <QA>" not in page
    assert f"minimaxad {__version__}" in page
    assert re.search(r"generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    assert "model.backbone" in page and "unireplknet_n" in page and "[&quot;bottle&quot;, &quot;screw&quot;]" in page


def test_thresholds_section(report) -> None:
    _, page, _ = report
    sec = re.search(r'<section id="thresholds">(.*?)</section>', page, re.S).group(1)
    assert html.escape(NOTES["image"]) in sec
    assert "max of held-out normal maps &lt;p99&gt;" in sec
    assert ">0.5<" in sec and ">0.6<" in sec
    assert "Heatmap colour range" in sec


def test_curves_and_histograms(report) -> None:
    _, page, _ = report
    curves = re.search(r'<section id="curves">(.*?)</section>', page, re.S).group(1)
    assert curves.count("<svg") == 2
    # bottle: anomalous {0.1, 0.3, 0.8} vs normal {0.9, 0.25, 0.1}: AUROC = 4.5 / 9
    assert "bottle (AUROC 50.0%)" in curves and "screw (AUROC" in curves and "all categories (AUROC" in curves
    assert "bottle (AP " in curves and "false positive rate" in curves and "recall" in curves
    assert "unknown label are excluded" in curves
    hist = re.search(r'<section id="histograms">(.*?)</section>', page, re.S).group(1)
    assert hist.count("<svg") == 2 and "Scores: bottle" in hist and "Scores: screw" in hist
    assert hist.count('class="thr"') == 2 and "threshold 0.5" in hist


def test_gallery_order_worst_first(report) -> None:
    _, page, _ = report
    assert _gallery_names(page) == EXPECTED_ORDER
    gal = _gallery(page)
    classes = re.findall(r'<tr class="item (\w+)"', gal)
    assert classes == ["miss"] * 3 + ["fa"] * 2 + ["ok"] * 6 + ["unk"]
    assert gal.count("MISSED DEFECT") == 3 and gal.count("FALSE ALARM") == 2


def test_img_count_placeholders_and_escaping(report) -> None:
    _, page, items = report
    readable = sum(1 for it in items if not it.path.endswith("broken.png"))
    masks = sum(1 for it in items if it.mask is not None)
    expected = readable + len(items) + masks + len(items)  # photo + heatmap + gt + predicted mask
    assert expected == 11 + 12 + 4 + 12
    assert page.count("<img") == expected
    assert all(src.startswith("data:image/") for src in re.findall(r'<img src="([^"]*)"', page))
    assert "image could not be read" in page and page.count("no mask") == len(items) - masks
    assert "we&lt;ir&amp;d&gt;.png" in page and WEIRD not in page


def test_gallery_cap_and_note(tmp_path: Path) -> None:
    items = _make_items(tmp_path / "data")
    out = write_report(
        tmp_path / "small.html", metrics=METRICS, items=items, image_threshold=THR, max_gallery=4, thumb_size=64
    )
    page = out.read_text(encoding="utf-8")
    assert _gallery_names(page) == EXPECTED_ORDER[:4]
    assert "8 more image(s) omitted" in page
    assert page.count("<img") == 4 + 4 + 3  # photo + heatmap each; gt for the 3 misses (the false alarm has none)
    assert "predicted mask" not in _gallery(page)


def test_without_thresholds_and_map_range(tmp_path: Path) -> None:
    items = _make_items(tmp_path / "data")
    out = write_report(tmp_path / "r.html", metrics={}, items=items, map_range=(0.0, 2.0))
    page = out.read_text(encoding="utf-8")
    names = _gallery_names(page)
    # rank badness: each of these is on the wrong side of every image of the other class
    assert set(names[:2]) == {"b_miss_low.png", "b_fa_high.png"} and names[-1] == "broken.png"
    assert "MISSED DEFECT" not in page and "FALSE ALARM" not in page
    assert "No metrics were given" in page and "not set" in page
    assert "<b>0</b> to <b>2</b> (given)" in page


def test_per_category_thresholds_and_directory_path(tmp_path: Path) -> None:
    items = _make_items(tmp_path / "data")
    out = write_report(
        tmp_path,
        metrics=METRICS,
        items=items,
        image_threshold={"bottle": 0.95, "screw": 0.15},
        pixel_threshold={"bottle": 0.5},
    )
    assert out == tmp_path / "report.html"
    page = out.read_text(encoding="utf-8")
    names = _gallery_names(page)
    # bottle misses: all 3 anomalous bottle images (< 0.95), by margin; screw 0.20 >= 0.15 is detected
    assert names[:3] == ["b_miss_low.png", "b_miss.png", "b_anom.png"]
    assert "screw: 0.15" in page and "no pixel threshold" in page


def test_bad_label_rejected(tmp_path: Path) -> None:
    it = ReportItem(path="x.png", category="c", label=2, score=0.1, anomaly_map=np.zeros((4, 4)), mask=None)
    with pytest.raises(ValueError, match="label"):
        write_report(tmp_path / "r.html", metrics={}, items=[it])


def test_roc_pr_helper_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # many ties
    res = _roc_pr(y, s)
    pos, neg = s[y == 1], s[y == 0]
    pair = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert res["auroc"] == pytest.approx(pair)
    small = _roc_pr(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7]))
    assert small["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert _roc_pr(np.array([1, 1]), np.array([0.2, 0.3])) is None


# --------------------------------------------------------------------------- browser


BROWSER_SCRIPT = (
    CHROME
    + """
page, profile, shot = sys.argv[1:4]
driver = start_chrome(profile, "1400,1000")
try:
    open_page(driver, page)
    out = {}
    out["imgs"] = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
    out["boxes"] = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg')).map(s => {"
        "const r = s.getBoundingClientRect(); return [r.width, r.height, s.getAttribute('aria-label')]; });")
    out["curves_drawn"] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#curves polyline'))"
        ".every(p => p.getBBox().width > 0 || p.getBBox().height > 0);")
    out["errors"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(int(height) + 150, 8000))
    out["screenshot"] = driver.save_screenshot(shot)
    print(json.dumps(out))
finally:
    driver.quit()
"""
)


@pytest.mark.browser
def test_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    """The report as Chromium draws it. The browser is driven from a child process: the test
    process has native libraries (ONNX Runtime, OpenVINO) loaded by earlier tests, and one
    SIGSEGV was seen there when selenium terminated chromedriver."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed (pip install selenium)")
    for binary, pkg in (("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} not found (apt-get install {pkg})")
    out, _, _ = report
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [sys.executable, "-c", BROWSER_SCRIPT, out.resolve().as_uri(), str(tmp_path / "chromium-profile"), str(shot)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    imgs = result["imgs"]
    assert len(imgs) == 39
    bad = [alt for complete, width, alt in imgs if not (complete and width > 0)]
    assert not bad, f"images not decoded: {bad}"
    boxes = result["boxes"]
    assert len(boxes) == 5  # ROC, PR, 2 histograms, colour bar
    assert all(w > 0 and h > 0 for w, h, _ in boxes), boxes
    assert result["curves_drawn"]  # the curves really drew something
    assert not result["errors"], result["errors"]
    assert result["screenshot"]
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and np.asarray(im.convert("L")).std() > 10
    if os.environ.get("MINIMAXAD_REPORT_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["MINIMAXAD_REPORT_SCREENSHOT"])


def test_a_deep_photo_is_shown_as_the_model_read_it(tmp_path):
    from minimaxad.reporting.html import _load_photo

    path = tmp_path / "mono12.png"
    Image.fromarray(np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))).save(path)
    item = ReportItem(str(path), "part", 0, 0.1, np.zeros((8, 8), np.float32))
    shown, size, error = _load_photo(item, 32, white_level=4095)
    assert error is None and size == (64, 16) and np.asarray(shown).max() >= 240
    assert np.asarray(_load_photo(item, 32)[0]).max() <= 16  # the full 16-bit scale: nearly black
