"""The pixel-threshold rules of engine.thresholds: each against a hand-computed value, maps given
as one tensor or one 2-D map per photo (ragged), and the documented default."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from minimaxad.engine import thresholds
from minimaxad.engine.thresholds import (
    DEFAULT_PIXEL_RULE,
    PIXEL_RULES,
    calibrate_thresholds,
    get_pixel_rule,
    normal_pixels,
    thresholds_for,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# two normal photos of 2x3 pixels: the pooled pixels are 0, 1, ..., 11
MAPS = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
SCORES = np.array([5.0, 11.0])
FPR = 0.1

# by hand, with numpy's linear quantile (position p * (n - 1) in the sorted values):
# 90th percentile of 0..11: position 9.9 -> 9.9; median 5.5; per-photo maxima 5 and 11;
# population std of 0..11: sqrt((12**2 - 1) / 12)
HAND = {
    "quantile": 9.9,
    "quantile_margin": 9.9 + 1.0 * (9.9 - 5.5),
    "max": 11.0,
    "image_max_median": 8.0,  # (5 + 11) / 2
    "image_max_p90": 5 + 0.9 * (11 - 5),  # position 0.9 between the two maxima
    "mean_std": 5.5 + 3.0 * math.sqrt(143 / 12),
}


def calibrate(maps, rule: str | None = None, **kwargs) -> dict:
    """calibrate_thresholds with this file's settings (the rule's default unless ``rule``)."""
    scores = kwargs.pop("scores", SCORES)
    options = dict(image_fpr=0.5, pixel_fpr=FPR, source="test photos", seed=0) | kwargs
    if rule is not None:
        options["pixel_rule"] = rule
    return calibrate_thresholds(scores, maps, **options)


def test_the_table_is_the_hand_computed_rules():
    assert list(PIXEL_RULES) == list(HAND)


@pytest.mark.parametrize("rule", list(HAND))
def test_each_rule_against_a_hand_computed_value(rule):
    pixel = calibrate(MAPS, rule)["pixel"]
    assert pixel["value"] == pytest.approx(HAND[rule], abs=1e-12)
    assert pixel["method"] == rule
    assert pixel["note"].endswith("of 2 test photos")
    # the false-positive rate is recorded only where it sets the threshold
    assert ("fpr" in pixel) == (rule in ("quantile", "quantile_margin"))
    if "fpr" in pixel:
        assert pixel["fpr"] == FPR and pixel["note"].startswith("90th percentile")


def test_quantile_rule_is_the_calibration_of_earlier_runs():
    """Today's rule, its note, and the stored pixel quantiles, as before the table of rules."""
    calibration = calibrate(MAPS, "quantile")
    assert calibration["pixel"] == {
        "value": pytest.approx(9.9, abs=1e-12),
        "method": "quantile",
        "fpr": FPR,
        "note": "90th percentile of the pixel scores of 2 test photos",
    }
    assert calibration["normal_pixel_quantiles"] == pytest.approx(np.linspace(0, 11, 1001).tolist(), abs=1e-12)
    # re-calibration at another pixel false-positive rate still reads the stored quantiles
    again = thresholds_for(calibration, pixel_false_positive_rate=0.5)
    assert again.pixel.value == pytest.approx(5.5, abs=1e-9)


def test_ragged_maps_of_other_sizes_give_the_hand_computed_values():
    """Photos of different sizes: 3x2, 1x4 and 2x1 maps (pixels 0..11, maxima 5, 9, 11)."""
    ragged = [MAPS[0].reshape(3, 2), torch.arange(6.0, 10.0).reshape(1, 4), torch.tensor([[10.0], [11.0]])]
    scores = np.array([1.0, 2.0, 3.0])
    expected = dict(HAND, image_max_median=9.0, image_max_p90=9 + 0.8 * (11 - 9))
    for rule, value in expected.items():
        assert calibrate(ragged, rule, scores=scores)["pixel"]["value"] == pytest.approx(value, abs=1e-12), rule
    normal = normal_pixels(ragged, FPR)
    assert normal.image_max.tolist() == [5.0, 9.0, 11.0] and normal.pixels.tolist() == list(range(12))


@pytest.mark.parametrize("sampled", [False, True])
def test_ragged_maps_give_the_same_thresholds_as_the_same_pixels_in_a_tensor(monkeypatch, sampled):
    """Each photo's map as a list of 2-D maps (here of different shapes) gives the calibration of
    the (N, H, W) tensor, bit for bit, per category too; also when the pixels are sampled."""
    if sampled:
        monkeypatch.setattr(thresholds, "MAX_PIXEL_SAMPLES", 500)
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 8, 12, generator=generator) ** 3
    scores = torch.rand(6, generator=generator).numpy()
    shapes = [(8, 12), (12, 8), (4, 24), (96, 1), (1, 96), (16, 6)]
    ragged = [m.reshape(shape) for m, shape in zip(maps, shapes)]
    categories = ["a", "b", "a", "b", "a", "b"]
    for rule in PIXEL_RULES:
        from_tensor = calibrate(maps, rule, scores=scores, categories=categories, seed=3)
        from_list = calibrate(ragged, rule, scores=scores, categories=categories, seed=3)
        assert from_list == from_tensor, rule
        assert sorted(from_list["per_category"]) == ["a", "b"]
    if sampled:  # the sample really is a sample, and the same one for maps of any sizes
        assert len(normal_pixels(maps, FPR).pixels) == 500
        pieces = [torch.rand(7, 9, generator=generator), torch.rand(30, 11, generator=generator)]
        flat = torch.cat([p.reshape(-1) for p in pieces])[None, None]
        assert np.array_equal(normal_pixels(pieces, FPR, seed=5).pixels, normal_pixels(flat, FPR, seed=5).pixels)


def test_the_default_rule_is_the_documented_one():
    assert DEFAULT_PIXEL_RULE in PIXEL_RULES
    assert inspect.signature(calibrate_thresholds).parameters["pixel_rule"].default == DEFAULT_PIXEL_RULE
    calibration = calibrate(MAPS)
    assert calibration["pixel"]["method"] == DEFAULT_PIXEL_RULE
    assert calibration["pixel"]["value"] == pytest.approx(HAND[DEFAULT_PIXEL_RULE], abs=1e-12)
    text = DOCS.read_text()
    section = text[text.index("## Choosing the pixel threshold without defects") :]
    assert re.search(rf"default[^.]*`{DEFAULT_PIXEL_RULE}`", section), "docs/metrics.md names another default"
    for rule in PIXEL_RULES:
        assert f"`{rule}`" in section, f"docs/metrics.md does not describe the rule {rule}"


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="unknown pixel threshold rule 'p99'; choose one of quantile"):
        calibrate(MAPS, "p99")
    with pytest.raises(ValueError, match="unknown pixel threshold rule"):
        get_pixel_rule("")
    with pytest.raises(ValueError, match=r"normal map 1 has shape \(1, 2, 3\); expected one 2-D"):
        calibrate([MAPS[0], MAPS[1:]])
    with pytest.raises(ValueError, match=r"shape \(12,\); expected \(N, H, W\)"):
        calibrate(MAPS.reshape(-1))
    with pytest.raises(ValueError, match="2 normal scores but 1 normal maps"):
        calibrate(MAPS[:1])
    with pytest.raises(ValueError, match="no normal scores"):
        calibrate([], scores=np.zeros(0))


def test_the_command_line_offers_every_rule_and_a_run_records_it(tmp_path):
    import json

    from minimaxad.cli import PIXEL_RULE_NAMES, main
    from minimaxad.data import generate_synthetic_dataset
    from minimaxad.engine.checkpoint import read_checkpoint
    from minimaxad.engine.thresholds import PIXEL_RULES

    assert PIXEL_RULE_NAMES == tuple(PIXEL_RULES)
    root = generate_synthetic_dataset(
        tmp_path / "data", categories=("weave",), n_train=8, n_test_good=2, n_test_defect=1, image_size=32, seed=1
    )
    argv = ["fit", "--data", str(root), "--output", str(tmp_path / "run"), "--backbone", "unireplknet_micro"]
    argv += ["--encoder-weights", "none", "--image-size", "32", "--batch-size", "4", "--max-steps", "1", "--quiet"]
    assert main(argv + ["--pixel-threshold-rule", "image_max_median", "--val-fraction", "0.25"]) == 0
    state = read_checkpoint(tmp_path / "run" / "weave" / "checkpoint.pt")
    assert state["thresholds"]["pixel"]["method"] == "image_max_median"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pixel_threshold_rule"] == "image_max_median"


def test_pixel_fpr_alone_selects_the_quantile_rule():
    from minimaxad.cli import build_parser, config_from_args

    base = ["fit", "--data", "d", "--output", "o"]
    assert config_from_args(build_parser().parse_args(base)).pixel_threshold_rule == "image_max_p90"
    config = config_from_args(build_parser().parse_args(base + ["--pixel-fpr", "0.01"]))
    assert (config.pixel_threshold_rule, config.pixel_fpr) == ("quantile", 0.01)
    config = config_from_args(
        build_parser().parse_args(base + ["--pixel-fpr", "0.01", "--pixel-threshold-rule", "max"])
    )
    assert config.pixel_threshold_rule == "max"
