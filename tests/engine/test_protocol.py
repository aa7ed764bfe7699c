"""Protocols as data (engine/protocol.py), the presets that carry them, seed spreads, the
stratified un-augmented calibration set and the AeBAD-S training crop of the original photo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from minimaxad.cli import main
from minimaxad.data import UnifiedDataset, build_dataset, calibration_subset, split_holdout
from minimaxad.data.transforms import RandomResizedCropFlip, Transform
from minimaxad.engine.config import RunConfig
from minimaxad.engine.protocol import PROTOCOLS, Protocol, get_protocol
from minimaxad.presets import get_preset
from minimaxad.reporting.results import format_paper_table, format_table, seed_spread, write_metrics
from tests.data.helpers import make_mvtec
from tests.data.test_formats import _make_aebad

from .conftest import TINY


def test_protocol_round_trips_and_checks_its_rules():
    for protocol in PROTOCOLS.values():
        assert Protocol.from_dict(protocol.to_dict()) == protocol
        assert get_protocol(protocol.to_dict()) == protocol == get_protocol(protocol.name)
        json.dumps(protocol.to_dict())  # storable in config.json and the checkpoint
    with pytest.raises(ValueError, match="image_score='top-5'; expected one of top1pct-mean, max-pixel"):
        Protocol("x", "s", image_score="top-5")
    with pytest.raises(ValueError, match="unknown protocol 'mvtec'; choose one of"):
        get_protocol("mvtec")
    with pytest.raises(ValueError, match="unknown protocol key"):
        Protocol.from_dict({"name": "x", "script": "s", "colour": "red"})
    assert get_protocol(None).name == "single"


@pytest.mark.parametrize(
    "preset, drop_last, top_ratio, evaluation",
    [
        ("mvtec-uni", True, 0.01, "common"),
        ("visa-uni", True, 0.01, "common"),
        ("goodsad", False, 0.01, "common"),
        ("visa", False, 0.0, "common"),
        ("aebad", False, 0.0, "aebad-evaluate"),
        ("aebad-mvtec", True, 0.01, "common"),
        ("realiad", False, 0.01, "common"),
        ("realiad-uni", True, 0.01, "common"),
        ("mad-sim", False, 0.01, "common"),
    ],
)
def test_presets_carry_their_scripts_protocol(preset, drop_last, top_ratio, evaluation):
    config = RunConfig().updated(**get_preset(preset))
    protocol = get_protocol(config.protocol)
    assert config.drop_last is drop_last and config.top_ratio == top_ratio
    assert config.augment is preset.startswith("aebad")  # RandomResizedCrop + flip of AeBAD-S photos only
    assert config.adc_limit_batch == "nominal"  # every script compares against the nominal batch's limit
    assert protocol.evaluation == evaluation
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))).protocol == config.protocol


def test_realiad_presets():
    single, unified = get_preset("realiad"), get_preset("realiad-uni")
    assert (single["epochs"], single["image_size"], single["loss"], single["unified"]) == (50, 256, "adc", False)
    assert (unified["epochs"], unified["image_size"], unified["unified"], unified["drop_last"]) == (1, 256, True, True)
    assert single["format"] == unified["format"] == "realiad"


def test_aebad_protocol_rules():
    p = get_protocol("aebad")
    assert (p.level_merge, p.smoothing, p.image_score, p.aupro, p.mask_rule) == (
        "sum",
        "scipy-gaussian-sigma4-reflect",
        "max-pixel",
        "per-image-mean",
        "resize-crop-relabel-max",
    )
    assert p.reported == ("i_auroc", "p_auroc", "aupro") and p.averaged_over == "domains"


def test_presets_verbose_lists_protocols(capsys):
    assert main(["presets", "-v"]) == 0
    out = capsys.readouterr().out
    assert "protocol (train_single_AeBAD.py): aebad:" in out
    assert "protocol (train_multi_MVTecAD.py / train_multi_ViSA.py): unified: batches drop-last" in out
    assert "realiad-uni" in out and "per-image-mean" in out


def test_cli_protocol_option_overrides_the_preset(tmp_path):
    from minimaxad.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["fit", "--preset", "visa", "--protocol", "unified", "--data", "x", "--output", str(tmp_path)]
    )
    config = config_from_args(args)
    assert config.protocol["name"] == "unified" and config.drop_last and config.top_ratio == 0.01
    args = build_parser().parse_args(
        [
            "fit",
            "--preset",
            "visa",
            "--protocol",
            "unified",
            "--top-ratio",
            "0",
            "--data",
            "x",
            "--output",
            str(tmp_path),
        ]
    )
    assert config_from_args(args).top_ratio == 0.0  # an explicit option still wins


# -- seeds ------------------------------------------------------------------------------------
def _summary(a, b):
    return {
        "categories": {"bottle": {"i_auroc": a, "aupro": 0.5}, "grid": {"i_auroc": b, "aupro": 0.7}},
        "mean": {"i_auroc": (a + b) / 2, "aupro": 0.6},
    }


def test_seed_spread_mean_and_std_per_category_and_metric(tmp_path):
    runs = {"1": _summary(0.9, 0.7), "11": _summary(0.8, 0.7), "111": _summary(0.7, 0.7)}
    spread = seed_spread(runs)
    assert spread["seeds"] == [1, 11, 111]
    assert spread["categories"]["bottle"]["i_auroc"] == pytest.approx(0.8)
    assert spread["categories_std"]["bottle"]["i_auroc"] == pytest.approx(np.std([0.9, 0.8, 0.7]))
    assert spread["categories_std"]["grid"]["i_auroc"] == pytest.approx(0.0)
    assert spread["mean"]["i_auroc"] == pytest.approx(0.75)
    assert spread["std"]["i_auroc"] == pytest.approx(np.std([0.8, 0.75, 0.7]))
    assert spread["runs"]["11"]["categories"]["bottle"]["i_auroc"] == 0.8
    assert "80.0 ± 8.2" in format_table(spread)
    json_path, csv_path = write_metrics(spread, tmp_path)
    doc = json.loads(json_path.read_text())
    assert doc["runs"]["111"]["mean"]["i_auroc"] == pytest.approx(0.7) and doc["std"]["aupro"] == 0.0
    header, bottle = csv_path.read_text().splitlines()[:2]
    assert header.split(",")[:3] == ["category", "i_auroc", "i_auroc_std"]
    assert float(bottle.split(",")[2]) == pytest.approx(np.std([0.9, 0.8, 0.7]))


def test_aebad_table_has_the_papers_layout():
    summary = {
        "categories": {
            d: {"i_auroc": 0.5 + i / 10, "p_auroc": 0.6, "aupro": 0.4}
            for i, d in enumerate(["same", "background", "illumination", "view"])
        },
        "mean": {"i_auroc": 0.65, "p_auroc": 0.6, "aupro": 0.4},
    }
    lines = format_paper_table(summary, get_protocol("aebad")).splitlines()
    assert lines[0].split() == ["metric", "same", "background", "illumination", "view", "mean"]
    assert lines[2].split() == ["I-AUROC", "50.0", "60.0", "70.0", "80.0", "65.0"]
    assert lines[3].split()[0] == "AUPRO" and lines[4].split()[0] == "P-AUROC"


@pytest.mark.slow
def test_fit_seeds_writes_the_spread(synthetic_root, tmp_path):
    out = tmp_path / "seeds"
    assert (
        main(
            [
                "fit",
                "--data",
                str(synthetic_root),
                "--categories",
                "weave",
                "--output",
                str(out),
                *TINY,
                "--max-steps",
                "1",
                "--seeds",
                "1",
                "11",
            ]
        )
        == 0
    )
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["seeds"] == [1, 11] and sorted(doc["runs"]) == ["1", "11"]
    for seed in ("1", "11"):
        own = json.loads((out / f"seed-{seed}" / "metrics.json").read_text())
        assert doc["runs"][seed]["categories"]["weave"] == pytest.approx(own["categories"]["weave"])
        assert json.loads((out / f"seed-{seed}" / "config.json").read_text())["seed"] == int(seed)
    values = [doc["runs"][s]["categories"]["weave"]["p_auroc"] for s in ("1", "11")]
    assert doc["categories"]["weave"]["p_auroc"] == pytest.approx(np.mean(values))
    assert doc["categories_std"]["weave"]["p_auroc"] == pytest.approx(np.std(values))
    page = (out / "report.html").read_text()
    assert "±" in page and "seed-1/report.html" in page and "seed-11/report.html" in page
    assert json.loads((out / "config.json").read_text())["seeds"] == [1, 11]


# -- calibration set --------------------------------------------------------------------------
def test_calibration_set_represents_every_category(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("a", "b", "c"), n_train=6, n_good=1, n_defect=1)
    train = build_dataset("mvtec", root, split="train", image_size=16)
    chosen = calibration_subset(train, 2, seed=5)
    assert len(chosen) == 6 and {c: chosen.item_categories.count(c) for c in "abc"} == {"a": 2, "b": 2, "c": 2}
    assert chosen.paths == calibration_subset(train, 2, seed=5).paths  # deterministic
    assert any(calibration_subset(train, 2, seed=s).paths != chosen.paths for s in range(6, 10))  # seeded
    assert chosen.paths == sorted(chosen.paths)  # dataset order kept
    assert len(calibration_subset(train, 100)) == len(train)
    unified = UnifiedDataset([build_dataset("mvtec", root, "train", categories=[c], image_size=16) for c in "abc"])
    _, held = split_holdout(unified, 0.5, seed=0)
    assert set(calibration_subset(held, 1).item_categories) == {"a", "b", "c"}


def test_holdout_of_an_augmented_set_is_not_augmented(tmp_path):
    root = _make_aebad(tmp_path / "AeBAD")
    train = build_dataset("aebad", root, split="train", image_size=32, crop_size=24, augment=True)
    _, held = split_holdout(train, 0.5, seed=0)
    calibration = calibration_subset(held, 10).with_augment(False)
    torch.manual_seed(0)
    a = calibration[0]["image"]
    torch.manual_seed(1)
    assert torch.equal(a, calibration[0]["image"])  # deterministic: no random crop
    assert torch.equal(a, Transform(32, 24)(calibration.paths[0]))  # exactly the test transform


def test_aebad_training_crop_is_taken_from_the_original_photo(tmp_path):
    """RandomResizedCrop(crop, 0.7-1, bicubic) + flip of the decoded photo, not of a 256-px
    resize (and never from the cache)."""
    root = _make_aebad(tmp_path / "AeBAD")
    config = RunConfig(data=str(root), format="aebad", image_size=32, crop_size=24, augment=True, cache=True)
    from minimaxad.engine.runner import open_dataset

    train = open_dataset(config, "train")
    assert not train.is_cached
    photo = Image.open(train.paths[0]).convert("RGB")
    torch.manual_seed(7)
    item = train[0]["image"]
    torch.manual_seed(7)
    cropped, _ = RandomResizedCropFlip(24)(photo)
    expected = Transform(24).finish(np.asarray(cropped), None, crop=False)[0]
    assert torch.equal(item, expected)


def test_a_test_domain_uses_its_categorys_thresholds():
    from minimaxad.engine.thresholds import resolve_thresholds

    calibration = {
        "image": {"value": 1.0},
        "pixel": {"value": 2.0},
        "per_category": {"AeBAD_S": {"image": {"value": 5.0}, "pixel": {"value": 6.0}}},
    }
    assert resolve_thresholds(calibration, category="AeBAD_S/view")["image"]["value"] == 5.0
    assert resolve_thresholds(calibration, category="bottle")["image"]["value"] == 1.0


def test_calibration_without_holdout_uses_every_category_unaugmented(tmp_path):
    """No hold-out (the paper presets): thresholds from at most val_max_images training images
    of EACH category, without the training augmentation, one set of thresholds per category."""
    from minimaxad.engine.trainer import calibrate
    from minimaxad.models import MiniMaxAD

    root = make_mvtec(tmp_path / "m", categories=("a", "b"), n_train=5, n_good=1, n_defect=1)
    train = build_dataset("mvtec", root, split="train", image_size=32, augment=True)
    torch.manual_seed(0)
    model = MiniMaxAD("unireplknet_micro")
    config = RunConfig(val_max_images=3, batch_size=4, device="cpu")
    first = calibrate(model, config, None, train, torch.device("cpu"))
    assert sorted(first["per_category"]) == ["a", "b"]  # not the first 3 images, all of category a
    assert all(len(first["per_category"][c]["normal_scores"]) == 3 for c in "ab")
    assert "TRAINING images of each category, un-augmented" in first["source"]
    torch.manual_seed(123)  # an augmented set would crop differently under another seed
    again = calibrate(model, config, None, train, torch.device("cpu"))
    assert again["per_category"]["a"]["normal_scores"] == first["per_category"]["a"]["normal_scores"]
