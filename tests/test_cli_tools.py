"""report, export, benchmark, presets and demo commands."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from minimaxad.cli import main
from minimaxad.inference.predict import Predictor
from minimaxad.presets import PRESETS, get_preset


def test_report_rerenders_from_saved_evaluation(trained_checkpoint, tmp_path):
    run = trained_checkpoint.parent
    assert (run / "evaluation.npz").is_file()
    out = tmp_path / "again.html"
    assert main(["report", str(run), "--output", str(out), "--threshold", "0.25", "--max-gallery", "5"]) == 0
    html = out.read_text()
    assert "set by the user (0.25)" in html and "washer" in html and "weave" in html
    assert "http://" not in html.replace("http://www.w3.org", "")  # SVG namespace only


def test_report_missing_evaluation_is_clear(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no evaluation.npz" in capsys.readouterr().err


def test_debug_shows_the_traceback_that_the_one_line_error_hides(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minimaxad report: error: ") and "--debug shows the traceback" in err
    assert "Traceback" not in err
    with pytest.raises(OSError) as raised:  # the exception itself, for the traceback
        main(["report", str(missing), "--debug"])
    assert str(missing) in str(raised.value)


def test_every_command_takes_debug_and_the_shared_options_once():
    from minimaxad.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.choices and "fit" in a.choices]
    for name, command in commands.choices.items():
        flags = [f for action in command._actions for f in action.option_strings]
        assert "--debug" in flags, name
        assert len(flags) == len(set(flags)), f"{name}: an option defined twice"
    assert commands.choices["export"].parse_known_args(["--checkpoint", "c", "--output", "o"])[0].debug is False


def test_export_torchscript_matches_predictor(trained_checkpoint, synthetic_root, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(out)]) == 0
    meta = json.loads((tmp_path / "model.pt.json").read_text())
    assert meta["input_size"] == 64 and meta["thresholds"]["image"]["value"] is not None
    scripted = torch.jit.load(str(out))
    predictor = Predictor.from_checkpoint(trained_checkpoint, device="cpu")
    image = Image.open(synthetic_root / "washer" / "test" / "hole" / "000.png")
    batch, _ = predictor.preprocess([image])
    with torch.no_grad():
        maps, scores, _ = scripted(batch)
    expected = predictor.predict([image])
    assert maps.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(scores.numpy(), expected.scores, rtol=1e-5)


def test_export_onnx_runs_in_onnxruntime(trained_checkpoint, synthetic_root, tmp_path, capsys):
    code = main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.onnx")])
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        assert code == 2 and "pip install 'minimaxad[onnx]'" in capsys.readouterr().err
        pytest.skip("onnx / onnxruntime not installed (pip install 'minimaxad[onnx]'): export refusal checked")
    assert code == 0
    predictor = Predictor.from_checkpoint(trained_checkpoint, device="cpu")
    paths = [
        synthetic_root / "washer" / "test" / "hole" / "000.png",
        synthetic_root / "weave" / "test" / "good" / "000.png",
    ]
    batch, _ = predictor.preprocess(paths)  # batch 2 through a graph exported at batch 1
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    maps, scores, decisions = session.run(None, {"images": batch.numpy()})
    expected = predictor.predict(paths)
    assert decisions.tolist() == expected.is_anomalous.tolist()
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-5)
    np.testing.assert_allclose(maps[:, 0], expected.maps, atol=1e-5)


def test_presets_cover_the_papers_protocol_table(capsys):
    expected = {
        "goodsad": ("goodsad", False, "adc", 224, 240),
        "mvtec-uni": ("mvtec", True, "adc", 256, 160),
        "visa-uni": ("visa", True, "adc", 256, 160),
        "visa": ("visa", False, "global", 256, 150),
        "aebad": ("aebad", True, "global", 256, 130),
        "mad-sim": ("mad", False, "adc", 400, 150),
        "aebad-mvtec": ("aebad", True, "adc", 256, 20),
    }
    for name, (fmt, unified, loss, size, epochs) in expected.items():
        p = get_preset(name)
        assert (p["format"], p["unified"], p["loss"], p["image_size"], p["epochs"]) == (
            fmt,
            unified,
            loss,
            size,
            epochs,
        )
    assert get_preset("aebad")["crop_size"] == 224 and get_preset("aebad")["augment"]
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PRESETS)


def test_preset_with_override(synthetic_root, tmp_path):
    from minimaxad.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "fit",
            "--preset",
            "mvtec-uni",
            "--data",
            str(synthetic_root),
            "--epochs",
            "3",
            "--per-category",
            "--output",
            str(tmp_path),
        ]
    )
    config = config_from_args(args)
    assert config.epochs == 3 and config.unified is False and config.loss == "adc" and config.image_size == 256
    assert config.preset == "mvtec-uni"


@pytest.mark.slow
def test_demo_reduced(tmp_path, monkeypatch, capsys):
    """The demo end to end with a tiny model and a few steps; everything under ./minimaxad-demo."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", "3", "--backbone", "unireplknet_micro", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert os.listdir(tmp_path) == ["minimaxad-demo"]
    demo = tmp_path / "minimaxad-demo"
    for path in (
        "run/report.html",
        "run/metrics.json",
        "run/checkpoint.pt",
        "predictions/grain/scores.csv",
        "predictions/grain/heatmaps/good__000.png",
        "predictions/weave/masks/scratch__000.png",
    ):
        assert (demo / path).is_file(), path
    assert "RANDOM encoder" in out and "report:" in out and "I-AUROC" in out
