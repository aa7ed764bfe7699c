"""The demo: which encoder it uses (hub, offline), what it tells the user, and its report as
headless Chromium shows it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minimaxad.demo import DEMO_CATEGORIES, DEMO_DEFECTS, choose_encoder, decision_counts
from tests.browser import CHROME

from .http_server import ServedFiles, start_file_server


def test_demo_fetches_the_imagenet_encoder_when_it_can(tmp_path, monkeypatch):
    from minimaxad import MiniMaxAD

    file = "unireplknet_f_in1k_224_acc78.58.pth"
    torch.save(MiniMaxAD("unireplknet_f").encoder.state_dict(), tmp_path / "w.pth")
    served = ServedFiles(files={f"/DingXiaoH/UniRepLKNet/resolve/main/{file}": (tmp_path / "w.pth").read_bytes()})
    base, stop = start_file_server(served)
    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path / "cache"))
    try:
        monkeypatch.setenv("MINIMAXAD_HUB_URL", base)
        weights, sentence = choose_encoder("unireplknet_f", "hub", echo=lambda line: None, progress=False)
    finally:
        stop()
    assert weights == str(tmp_path / "cache" / file) and "ImageNet encoder weights" in sentence
    assert (
        hashlib.sha256(Path(weights).read_bytes()).digest()
        == hashlib.sha256(served.files[f"/DingXiaoH/UniRepLKNet/resolve/main/{file}"]).digest()
    )
    # offline now, but the file is cached: still the ImageNet encoder
    monkeypatch.setenv("MINIMAXAD_HUB_URL", "http://127.0.0.1:9")
    assert choose_encoder("unireplknet_f", "hub", echo=lambda line: None, progress=False)[0] == weights


def test_demo_offline_says_random_encoder_plainly(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path))
    weights, sentence = choose_encoder("unireplknet_f", "hub", echo=lambda line: None, progress=False)
    assert weights == "none"
    assert sentence.startswith("a RANDOM encoder") and "could not be downloaded" in sentence
    assert "127.0.0.1:9" in sentence and "unireplknet_f_in1k_224_acc78.58.pth" in sentence


BROWSER_SCRIPT = (
    CHROME
    + """
page, profile, shot = sys.argv[1:4]
driver = start_chrome(profile, "1300,1000")
try:
    open_page(driver, page)
    out = {"about": driver.execute_script("const s = document.querySelector('#about'); return s ? s.innerText : '';"),
           "summary": driver.execute_script("return document.querySelector('#summary').innerText;"),
           "badges": driver.execute_script(
               "return Array.from(document.querySelectorAll('#gallery tbody tr')).map(r => r.innerText);")}
    top = driver.execute_script("return document.querySelector('#summary').getBoundingClientRect().bottom + window.scrollY;")
    driver.set_window_size(1300, int(top) + 240)
    out["screenshot"] = driver.save_screenshot(shot)
    print(json.dumps(out))
finally:
    driver.quit()
"""
)


@pytest.mark.slow
@pytest.mark.browser
def test_demo_report_shows_the_decisions_in_chromium(tmp_path, monkeypatch, capsys):
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("headless Chromium or chromedriver not installed (/usr/bin/chromium, /usr/bin/chromedriver)")
    pytest.importorskip("selenium")
    from minimaxad.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", "3", "--backbone", "unireplknet_micro", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "minimaxad-demo" / "run"
    counts = decision_counts(run)
    total = counts["all"]
    n = len(DEMO_CATEGORIES)
    assert total["defective"] == n * len(DEMO_DEFECTS) * 3 and total["normal"] == n * 12  # the demo's test set
    said = f"{total['caught']} of {total['defective']} defective test images caught"
    assert said in out and "what the figures mean" in out and "Image AUROC" in out
    assert "RANDOM encoder" in out and "not the paper's accuracy" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["categories"]) == set(DEMO_CATEGORIES) == {"grain", "weave"}

    shot = tmp_path / "demo-report.png"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BROWSER_SCRIPT,
            (run / "report.html").resolve().as_uri(),
            str(tmp_path / "chromium-profile"),
            str(shot),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.loads(done.stdout.strip().splitlines()[-1])
    assert said in page["about"] and "RANDOM" in page["about"] and "ImageNet encoder" in page["about"]
    summary_rows = {line.split("\t")[0]: line.split("\t") for line in page["summary"].splitlines() if "\t" in line}
    assert int(summary_rows["all"][5]) == total["defective"] - total["caught"]  # missed defects, as the terminal
    assert int(summary_rows["all"][6]) == total["false_alarms"]
    badges = " ".join(page["badges"])
    assert ("MISSED DEFECT" in badges) == (total["caught"] < total["defective"])
    assert ("FALSE ALARM" in badges) == (total["false_alarms"] > 0) and ("detected" in badges or "correct" in badges)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size[0] >= 1000 and np.asarray(image.convert("L")).std() > 10
    if os.environ.get("MINIMAXAD_DEMO_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["MINIMAXAD_DEMO_SCREENSHOT"])


def test_clear_defects_keep_the_images_aligned():
    """subtle_fraction=0 (the demo's data) changes only how strong the defects are drawn."""
    from minimaxad.data.synthetic import render_sample

    normal_default = render_sample("weave", seed=0, index=1)[0]
    normal_clear = render_sample("weave", seed=0, index=1, subtle_fraction=0.0)[0]
    assert np.array_equal(normal_default, normal_clear)
    areas = {
        fraction: [
            int((render_sample(c, 0, 10_000 + i, "spot", subtle_fraction=fraction)[1] > 0).sum())
            for c in ("weave", "grain", "washer")
            for i in range(8)
        ]
        for fraction in (0.35, 0.0, 1.0)
    }
    assert np.mean(areas[0.0]) > np.mean(areas[0.35]) > np.mean(areas[1.0])  # spots grow with strength
    with pytest.raises(ValueError, match="subtle_fraction"):
        from minimaxad.data import generate_synthetic_dataset

        generate_synthetic_dataset("unused", subtle_fraction=1.5)


def test_demo_strength_range_only_grows_the_defects():
    """clear_strength (the demo draws the upper range) changes the defects, not the normal images
    nor where the defects are."""
    from minimaxad.data import generate_synthetic_dataset
    from minimaxad.data.synthetic import render_sample

    assert np.array_equal(
        render_sample("grain", 0, 3, None, clear_strength=(0.6, 1.0))[0], render_sample("grain", 0, 3, None)[0]
    )
    areas = {
        rng: [
            int((render_sample(c, 0, 20_000 + i, "spot", subtle_fraction=0.0, clear_strength=rng)[1] > 0).sum())
            for c in DEMO_CATEGORIES
            for i in range(8)
        ]
        for rng in ((0.25, 1.0), (0.6, 1.0), (1.0, 1.0))
    }
    assert np.mean(areas[(1.0, 1.0)]) > np.mean(areas[(0.6, 1.0)]) > np.mean(areas[(0.25, 1.0)])
    with pytest.raises(ValueError, match="clear_strength"):
        generate_synthetic_dataset("unused", clear_strength=(0.8, 0.5))
