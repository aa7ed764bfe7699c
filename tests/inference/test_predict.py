"""Prediction for the inspection station: CLI and Python API, odd inputs, thresholds."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from minimaxad.cli import main
from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.inference.predict import Predictor


@pytest.fixture(scope="module")
def photo_folder(synthetic_root, tmp_path_factory):
    """Good and defective photos, a corrupt file, and odd image modes of various sizes."""
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(synthetic_root / "weave" / "test" / "good" / "000.png", folder / "good.png")
    shutil.copy(synthetic_root / "washer" / "test" / "hole" / "000.png", folder / "hole.png")
    base = Image.open(folder / "good.png").convert("RGB")
    base.resize((97, 61)).convert("L").save(folder / "gray.png")
    base.resize((80, 120)).convert("RGBA").save(folder / "rgba.png")
    base.convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    sixteen = np.asarray(base.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: the upright photo is 50 wide, 70 high
    base.resize((70, 50)).save(folder / "rotated.jpg", exif=exif)
    data = (folder / "good.png").read_bytes()
    (folder / "corrupt.png").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("not an image")
    sub = folder / "line2"
    sub.mkdir()
    shutil.copy(folder / "good.png", sub / "good.png")  # same name in another folder
    return folder


EXPECTED_SIZES = {
    "good": (64, 64),
    "hole": (64, 64),
    "gray": (97, 61),
    "rgba": (80, 120),
    "palette": (64, 64),
    "sixteen": (64, 64),
    "rotated": (50, 70),
    "line2__good": (64, 64),
}


def test_predict_folder_outputs(trained_checkpoint, photo_folder, tmp_path, capsys):
    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(trained_checkpoint),
            str(photo_folder),
            "--output",
            str(out),
            "--quiet",
            "--batch-size",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 input(s) could not be read" in printed and "corrupt.png" in printed
    summary = json.loads((out / "scores.json").read_text())
    rows = {r["name"]: r for r in summary["predictions"]}
    assert set(rows) == set(EXPECTED_SIZES)
    assert [f["path"].endswith("corrupt.png") for f in summary["failed"]] == [True]
    for name, (w, h) in EXPECTED_SIZES.items():
        heat = Image.open(out / "heatmaps" / f"{name}.png")
        mask = Image.open(out / "masks" / f"{name}.png")
        assert heat.size == (w, h) and mask.size == (w, h), name
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        row = rows[name]
        assert 0.0 <= row["normalized_score"] <= 1.0
        assert row["decision"] in ("normal", "anomalous")
        assert (row["decision"] == "anomalous") == (row["score"] >= summary["image_threshold"])
        assert (row["normalized_score"] >= 0.5) == (row["decision"] == "anomalous")
    with open(out / "scores.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(EXPECTED_SIZES)
    assert "percentile of the image scores" in summary["image_threshold_note"]


def test_cli_and_python_api_agree(trained_checkpoint, photo_folder, tmp_path):
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_checkpoint),
                str(photo_folder / "hole.png"),
                str(photo_folder / "gray.png"),
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads((out / "scores.json").read_text())["predictions"]
    predictor = Predictor.from_checkpoint(trained_checkpoint, device="cpu")
    images = [Image.open(photo_folder / "hole.png"), np.asarray(Image.open(photo_folder / "gray.png"))]
    result = predictor.predict(images)
    assert result.maps.shape == (2, 64, 64) and result.defect_masks.shape == (2, 64, 64)
    np.testing.assert_allclose(result.scores, [r["score"] for r in rows], rtol=1e-5)
    # the fused model gives the scores of the training form
    plain = Predictor.from_checkpoint(trained_checkpoint, device="cpu", reparameterize=False).predict(images)
    np.testing.assert_allclose(plain.scores, result.scores, rtol=1e-4)


def test_threshold_options_change_decisions(trained_checkpoint, photo_folder, tmp_path):
    def decisions(*extra):
        out = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(trained_checkpoint),
                    str(photo_folder),
                    "--output",
                    str(out),
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        return json.loads((out / "scores.json").read_text())

    high = decisions("--threshold", "1e9")
    assert all(r["decision"] == "normal" for r in high["predictions"]) and high["image_threshold"] == 1e9
    low = decisions("--threshold", "-1")
    assert all(r["decision"] == "anomalous" for r in low["predictions"])
    # a false-positive rate re-calibrates on the normal scores stored at training time
    normal = np.asarray(read_checkpoint(trained_checkpoint)["thresholds"]["normal_scores"])
    half = decisions("--false-positive-rate", "0.5")
    assert half["image_threshold"] == pytest.approx(float(np.quantile(normal, 0.5)))
    assert "chosen by the user's false-positive rate" in half["image_threshold_note"]

    # a lower threshold never flags fewer images
    def count(summary):
        return sum(r["decision"] == "anomalous" for r in summary["predictions"])

    assert count(decisions("--false-positive-rate", "0.9")) >= count(half)
    pixel = decisions("--pixel-threshold", "-1")
    assert pixel["pixel_threshold"] == -1


def test_missing_input_is_reported(trained_checkpoint, tmp_path, capsys):
    code = main(
        [
            "predict",
            "--checkpoint",
            str(trained_checkpoint),
            str(tmp_path / "nope.png"),
            "--output",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert code == 1  # nothing could be predicted
    assert "nope.png: no such file or folder" in capsys.readouterr().out


def test_output_names_are_unique_and_readable(tmp_path):
    from minimaxad.inference.predict import collect_inputs

    for sub in ("a/x", "b/x", "b/y"):
        (tmp_path / sub).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "000.png")
    files, names, missing = collect_inputs(
        [tmp_path / "a" / "x" / "000.png", tmp_path / "b" / "x" / "000.png", tmp_path / "b" / "y" / "000.png"]
    )
    assert names == ["a__x__000", "b__x__000", "b__y__000"] and not missing
    _, names, _ = collect_inputs([tmp_path / "b"])
    assert names == ["x__000", "y__000"]
    _, names, _ = collect_inputs([tmp_path / "a" / "x" / "000.png"])
    assert names == ["000"]


def test_unified_model_has_per_category_thresholds(trained_checkpoint, synthetic_root, tmp_path):
    calibration = read_checkpoint(trained_checkpoint)["thresholds"]
    per_category = calibration["per_category"]
    assert sorted(per_category) == ["washer", "weave"]
    for name, values in per_category.items():
        assert len(values["normal_scores"]) == 3  # 25% of 12 normal images held out per category
        assert f"of category {name}" in values["image"]["note"]
    predictor = Predictor.from_checkpoint(trained_checkpoint, device="cpu")
    assert predictor.categories == ["washer", "weave"]
    image = synthetic_root / "weave" / "test" / "good" / "000.png"
    own = predictor.predict([image], category="weave")
    assert own.image_threshold == pytest.approx(float(np.quantile(per_category["weave"]["normal_scores"], 0.99)))
    assert predictor.predict([image]).image_threshold == pytest.approx(calibration["image"]["value"])
    with pytest.raises(ValueError, match="unknown category 'bolt'; this model knows washer, weave"):
        predictor.predict([image], category="bolt")
    # the CLI option, and a user threshold still wins over the category's
    out = tmp_path / "p"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_checkpoint),
                str(image),
                "--category",
                "weave",
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "scores.json").read_text())["image_threshold"] == pytest.approx(own.image_threshold)
    assert (
        Predictor.from_checkpoint(trained_checkpoint, image_threshold=0.3)
        .predict([image], category="weave")
        .image_threshold
        == 0.3
    )
    # the evaluation report of the unified run decides per category
    html = (trained_checkpoint.parent / "report.html").read_text()
    assert "per category: 99th percentile of the image scores" in html
