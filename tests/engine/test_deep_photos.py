"""Photos of more than 8 bits (a 12-bit camera's 16-bit files): fit measures their white level, and
training, testing and every deployment path read them with it, alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minimaxad.cli import main
from minimaxad.data import build_dataset
from minimaxad.data.io import WHITE_LEVEL_PERCENTILE
from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.inference.export import export_metadata
from minimaxad.inference.predict import Predictor
from minimaxad.inference.serve import decode_opened, open_upload

from .conftest import TINY

GAIN = 3  # 8-bit values x 3: a dark 10-bit photo (at most 765 of 65535) in a 16-bit file


@pytest.fixture(scope="module")
def deep_root(synthetic_root, tmp_path_factory) -> Path:
    """The synthetic 'weave' category with every photo rewritten as a dark 16-bit grayscale PNG."""
    root = tmp_path_factory.mktemp("deep") / "weave"
    shutil.copytree(Path(synthetic_root) / "weave", root)
    for path in sorted(root.glob("t*/**/*.png")):  # train/ and test/, not the masks
        gray = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * GAIN
        Image.fromarray(gray).save(path)
    return root


def _pixels(root: Path) -> np.ndarray:
    return np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((root / "train").rglob("*.png"))])


def test_fit_measures_the_white_level_and_every_path_reads_photos_alike(deep_root, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--data", str(deep_root), "--output", str(out), *TINY, "--max-steps", "2", "--val-fraction", "0.25"]
    assert main(args) == 0
    level = json.loads((out / "config.json").read_text())["white_level"]
    assert level == pytest.approx(np.percentile(_pixels(deep_root), WHITE_LEVEL_PERCENTILE), rel=1e-5)
    assert 3 * 180 < level <= 3 * 255  # the photos' own range, far below 65535
    state = read_checkpoint(out / "weave" / "checkpoint.pt")
    assert state["config"]["white_level"] == level
    assert export_metadata(state, "onnx", None, ["maps", "scores"])["white_level"] == level

    # the dataset (training and test) and the predictor decode a photo to the same 8-bit pixels,
    # spread over the 8-bit range rather than nearly black (full-range reading: at most 3)
    test_set = build_dataset("mvtec", deep_root, "test", image_size=64, white_level=level)
    photo, _ = test_set.decode(0)
    predictor = Predictor.from_checkpoint(out / "weave" / "checkpoint.pt", device="cpu")
    assert predictor.white_level == level
    decoded = np.asarray(predictor.decode(test_set.records[0].path))
    assert np.array_equal(decoded, np.asarray(photo))
    assert decoded.max() >= 200 and np.asarray(build_dataset("mvtec", deep_root, "test").decode(0)[0]).max() <= 3
    uploaded = open_upload(Path(test_set.records[0].path).read_bytes(), 10**8)  # the HTTP service's path
    assert np.array_equal(np.asarray(decode_opened(uploaded, predictor.white_level)), decoded)

    # predict scores a photo exactly as test does
    tested = tmp_path / "test"
    assert main(["test", "--checkpoint", str(out), "--output", str(tested), "--quiet"]) == 0
    fitted = json.loads((out / "metrics.json").read_text())["categories"]["weave"]
    again = json.loads((tested / "metrics.json").read_text())["categories"]["weave"]
    assert again["p_auroc"] == pytest.approx(fitted["p_auroc"], abs=1e-6)
    batch = test_set[0]["image"][None]
    expected_score = predictor.run(batch, [None])[1][0]
    assert predictor.predict([test_set.records[0].path]).scores[0] == pytest.approx(expected_score, rel=1e-5)


def test_a_given_white_level_is_kept_and_a_bad_one_refused(deep_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fit", "--data", str(deep_root), "--output", str(out), *TINY, "--max-steps", "1", "--no-eval"]
    assert main([*args, "--white-level", "4095"]) == 0
    assert json.loads((out / "config.json").read_text())["white_level"] == 4095
    assert read_checkpoint(out / "weave" / "checkpoint.pt")["config"]["white_level"] == 4095
    capsys.readouterr()
    assert main([*args[:4], str(tmp_path / "bad"), *args[5:], "--white-level", "-1"]) == 2
    assert "--white-level -1: expected a pixel value above 0" in capsys.readouterr().err


def test_eight_bit_photos_have_no_white_level(synthetic_root, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--data", str(synthetic_root), "--categories", "weave", "--output", str(out), *TINY]
    assert main([*args, "--max-steps", "1", "--no-eval"]) == 0
    assert json.loads((out / "config.json").read_text())["white_level"] is None
