"""INT8 (openvino-int8): the export round-trips through predict with float32's decisions, its sidecar
says how it was made and what it was checked against, predict quantizes a checkpoint on the fly,
tiled models quantize their tile graph, and a missing OpenVINO or NNCF is refused with what to install."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import numpy as np
import pytest

from minimaxad.cli import main
from minimaxad.inference.backends import BackendUnavailable, create_backend
from minimaxad.inference.export import export
from minimaxad.inference.predict import Predictor, TilingOverrides
from minimaxad.inference.quantize import INT8_RECHECK_MARGIN, require_int8

HAS_INT8 = all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf", "onnx"))
needs_int8 = pytest.mark.skipif(not HAS_INT8, reason="openvino/nncf not installed (pip install 'minimaxad[int8]')")
# OpenVINO's tests run in a pytest process of their own (scripts/test.sh)
pytestmark = pytest.mark.openvino
CALIBRATION = 16  # a tiny model at 64 px: a few images calibrate it, in seconds


def _test_images(synthetic_root):
    return sorted(synthetic_root.glob("*/test/*/*.png"))


def _scores(folder):
    with open(folder / "scores.csv") as handle:
        return {r["name"]: (float(r["score"]), r["decision"]) for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def int8_file(trained_checkpoint, tmp_path_factory):
    """The trained test model exported to INT8 (CLI), calibrated on 16 of its training images."""
    if not HAS_INT8:
        pytest.skip("openvino/nncf not installed (pip install 'minimaxad[int8]')")
    out = tmp_path_factory.mktemp("int8") / "model.xml"
    argv = ["export", "--checkpoint", str(trained_checkpoint), "--output", str(out), "--format", "openvino-int8"]
    assert main([*argv, "--calibration-images", str(CALIBRATION)]) == 0
    return out


def test_the_sidecar_says_how_the_int8_file_was_made(int8_file, trained_checkpoint):
    from minimaxad.engine.checkpoint import read_checkpoint

    meta = json.loads((int8_file.parent / "model.xml.json").read_text())
    state = read_checkpoint(trained_checkpoint)
    assert meta["format"] == "openvino-int8" and meta["tiling"] is None
    assert meta["outputs"] == ["anomaly_map", "image_score", "is_anomalous"]
    assert meta["thresholds"]["image"]["value"] == state["thresholds"]["image"]["value"]
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["input_size"] == 64
    reference = meta["float32_reference"]
    assert reference["file"] == "model.float32.xml" and (int8_file.parent / "model.float32.bin").is_file()
    assert max(reference["parity_relative_error"].values()) < 1e-4  # float32 IR = PyTorch
    int8 = meta["int8"]
    assert int8["calibration_images"] == CALIBRATION and "normal training images" in int8["calibration"]
    assert int8["recheck_margin"] == INT8_RECHECK_MARGIN and int8["versions"]["nncf"]
    assert any("anomaly map" in k for k in int8["kept_in_float32"])
    errors = int8["error_vs_float32"]
    assert errors["images"] == CALIBRATION and 0 < errors["map"] < 0.25 and errors["score"] < INT8_RECHECK_MARGIN
    # nothing else was written beside it (no staging folder, no intermediate ONNX)
    assert sorted(p.name for p in int8_file.parent.iterdir()) == [
        "model.bin",
        "model.float32.bin",
        "model.float32.xml",
        "model.xml",
        "model.xml.json",
    ]


def test_the_int8_export_round_trips_through_predict_with_float32_decisions(
    int8_file, trained_checkpoint, synthetic_root, tmp_path
):
    photos = synthetic_root / "washer" / "test"
    common = [str(photos), "--device", "cpu", "--quiet"]
    assert main(["predict", "--checkpoint", str(trained_checkpoint), *common, "--output", str(tmp_path / "f")]) == 0
    assert main(["predict", "--checkpoint", str(int8_file), *common, "--output", str(tmp_path / "q")]) == 0
    exact, quantized = _scores(tmp_path / "f"), _scores(tmp_path / "q")
    summary = json.loads((tmp_path / "q" / "scores.json").read_text())
    assert summary["backend"] == "openvino-int8"
    assert exact.keys() == quantized.keys() and len(exact) == 10
    for name, (score, decision) in exact.items():
        assert quantized[name][1] == decision
        assert quantized[name][0] == pytest.approx(score, rel=INT8_RECHECK_MARGIN)


def test_scores_near_the_threshold_are_rechecked_with_the_float32_reference(
    int8_file, trained_checkpoint, synthetic_root
):
    """A threshold exactly on an image's float32 score: INT8 alone would decide it by chance; the
    re-check with the file's float32 reference decides every image as float32 does."""
    paths = _test_images(synthetic_root)
    exact = Predictor.from_checkpoint(trained_checkpoint, device="cpu").predict(paths)
    k = int(np.argsort(exact.scores)[len(paths) // 2])
    threshold = float(exact.scores[k])
    quantized = Predictor.from_checkpoint(int8_file, image_threshold=threshold)
    assert quantized.backend.name == "openvino-int8" and quantized.recheck_margin == INT8_RECHECK_MARGIN
    result = quantized.predict(paths)
    assert result.rechecked[k] and result.rechecked.sum() < len(paths)
    assert result.scores[k] == pytest.approx(exact.scores[k], rel=1e-5)  # the float32 reference's own score
    assert result.is_anomalous.tolist() == (exact.scores >= threshold).tolist()
    with pytest.raises(ValueError, match="is an INT8 file"):
        Predictor.from_checkpoint(int8_file, backend="openvino")


@needs_int8
def test_predict_quantizes_a_checkpoint_on_the_fly(trained_checkpoint, synthetic_root, tmp_path):
    """``predict --checkpoint C DIR --backend openvino-int8``: calibrated on C's training images, same
    decisions as float32, nothing written beside the checkpoint."""
    before = sorted(p.name for p in trained_checkpoint.parent.iterdir())
    photos = synthetic_root / "weave" / "test"
    common = [str(photos), "--device", "cpu", "--quiet"]
    assert main(["predict", "--checkpoint", str(trained_checkpoint), *common, "--output", str(tmp_path / "f")]) == 0
    argv = ["predict", "--checkpoint", str(trained_checkpoint), *common, "--backend", "openvino-int8"]
    assert main([*argv, "--output", str(tmp_path / "q")]) == 0
    exact, quantized = _scores(tmp_path / "f"), _scores(tmp_path / "q")
    assert {k: v[1] for k, v in quantized.items()} == {k: v[1] for k, v in exact.items()}
    assert json.loads((tmp_path / "q" / "scores.json").read_text())["backend"] == "openvino-int8"
    assert sorted(p.name for p in trained_checkpoint.parent.iterdir()) == before


@needs_int8
def test_a_tiled_model_quantizes_its_tile_graph_and_records_the_tiling(trained_checkpoint, synthetic_root, tmp_path):
    out = export(
        trained_checkpoint, tmp_path / "tiled.xml", "openvino-int8", tiling=TilingOverrides(tile_size=32),
        calibration_images_count=CALIBRATION,
    )  # fmt: skip
    meta = json.loads((tmp_path / "tiled.xml.json").read_text())
    assert meta["tiling"]["tile_size"] == 32 and meta["map"].startswith("tile maps")
    assert meta["outputs"] == ["anomaly_map", "image_score"]  # no decision inside: that needs the whole photo
    assert "normal training tiles" in meta["int8"]["calibration"]
    paths = _test_images(synthetic_root)[:6]
    exact = Predictor.from_checkpoint(trained_checkpoint, device="cpu", tiling=TilingOverrides(tile_size=32))
    quantized = Predictor.from_checkpoint(out)
    assert quantized.tiling.tile_size == 32
    a, b = exact.predict(paths), quantized.predict(paths)
    assert b.is_anomalous.tolist() == a.is_anomalous.tolist()
    np.testing.assert_allclose(b.scores, a.scores, rtol=INT8_RECHECK_MARGIN)


@pytest.mark.parametrize("missing", ["openvino", "nncf"])
def test_int8_is_refused_with_what_to_install_when_openvino_or_nncf_is_missing(
    missing, monkeypatch, trained_checkpoint, tmp_path, capsys
):
    monkeypatch.setitem(sys.modules, missing, None)  # "import nncf" now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'minimaxad\[int8\]'") as info:
        require_int8()
    assert {"openvino": "OpenVINO", "nncf": "NNCF"}[missing] in str(info.value)
    from minimaxad.models import MiniMaxAD

    with pytest.raises(BackendUnavailable, match="minimaxad"):
        create_backend("openvino-int8", MiniMaxAD("unireplknet_micro"), image_size=32, device="cpu")
    argv = ["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.xml")]
    assert main([*argv, "--format", "openvino-int8"]) != 0
    assert "minimaxad[int8]" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
