"""Every paper preset end to end on a tiny tree in its dataset's layout: ``fit`` then ``test``
through the command line, with the protocol of its script stored in the configuration and the
checkpoint, and the metrics its script reports (AeBAD-S: I-AUROC, P-AUROC, AUPRO per domain)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minimaxad.cli import main
from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.engine.protocol import get_protocol
from minimaxad.presets import PRESETS
from tests.data.helpers import make_mvtec
from tests.data.test_formats import _make_aebad, _make_mad, _make_realiad

DOMAINS = ["background", "illumination", "same", "view"]
COMMON_KEYS = {"i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro", "aupro_200"}
TINY = [
    "--backbone",
    "unireplknet_micro",
    "--encoder-weights",
    "none",
    "--batch-size",
    "2",
    "--max-steps",
    "2",
    "--seed",
    "1",
    "--quiet",
]


def _tree(preset: str, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """(data root, extra fit arguments, the result keys expected in metrics.json)."""
    small = dict(n_train=3, n_good=1, n_defect=1, size=(40, 36))
    if preset == "goodsad":
        root = make_mvtec(
            tmp_path / "GoodsAD",
            categories=("drink_can", "food_box"),
            defects=("dent",),
            ext=".jpg",
            mask_suffix="",
            **small,
        )
        return root, ["--image-size", "64"], ["drink_can", "food_box"]
    if preset in ("mvtec-uni",):
        root = make_mvtec(tmp_path / "MVTec", categories=("bottle", "grid"), defects=("crack",), **small)
        return root, ["--image-size", "64"], ["bottle", "grid"]
    if preset in ("visa", "visa-uni"):
        base = tmp_path / "VisA_pytorch"
        make_mvtec(base / "1cls", categories=("candle", "pcb1"), defects=("bad",), ext=".JPG", mask_suffix="", **small)
        return base, ["--image-size", "64"], ["candle", "pcb1"]
    if preset == "mad-sim":
        return _make_mad(tmp_path / "MAD", "MAD-Sim"), ["--image-size", "64"], ["01Gorilla", "02Unicorn"]
    if preset in ("realiad", "realiad-uni"):
        return _make_realiad(tmp_path / "Real-IAD"), ["--image-size", "64"], ["audiojack"]
    if preset == "aebad":
        return _make_aebad(tmp_path / "AeBAD"), ["--image-size", "80", "--crop-size", "64"], DOMAINS
    if preset == "aebad-mvtec":
        mvtec = make_mvtec(tmp_path / "MVTec", categories=("bottle", "grain"), defects=("crack",), **small)
        root = _make_aebad(tmp_path / "AeBAD")
        return (
            root,
            ["--image-size", "80", "--crop-size", "64", "--extra-data", f"mvtec={mvtec}"],
            ["bottle", "grain", *(f"AeBAD_S/{d}" for d in DOMAINS)],
        )
    raise AssertionError(preset)


PAPER_PRESETS = [
    "goodsad",
    "mvtec-uni",
    "visa-uni",
    "visa",
    "aebad",
    "mad-sim",
    "aebad-mvtec",
    "realiad",
    "realiad-uni",
]


def test_every_paper_preset_is_covered():
    assert sorted(PAPER_PRESETS) == sorted(name for name, p in PRESETS.items() if "protocol" in p)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_preset_fit_then_test(preset, tmp_path):
    root, extra, sets = _tree(preset, tmp_path)
    protocol = get_protocol(PRESETS[preset]["protocol"])
    keys = set(protocol.reported)
    out = tmp_path / "run"
    assert main(["fit", "--preset", preset, "--data", str(root), "--output", str(out), *TINY, *extra]) == 0
    fitted = json.loads((out / "metrics.json").read_text())
    assert fitted["protocol"] == protocol.name
    assert sorted(fitted["categories"]) == sorted(sets)
    for name in sets:
        assert set(fitted["categories"][name]) == keys, name
        assert all(0.0 <= fitted["categories"][name][k] <= 1.0 for k in keys)
    for k in keys:
        assert fitted["mean"][k] == pytest.approx(sum(fitted["categories"][n][k] for n in sets) / len(sets))
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == protocol.to_dict() and config["preset"] == preset
    assert config["drop_last"] == protocol.drop_last and config["top_ratio"] == protocol.top_ratio
    checkpoints = [out / "checkpoint.pt"] if PRESETS[preset]["unified"] else [out / c / "checkpoint.pt" for c in sets]
    for path in checkpoints:
        state = read_checkpoint(path)
        assert state["config"]["protocol"] == protocol.to_dict()
        assert state["encoder_state"] is not None and state["backbone"] == "unireplknet_micro"
        assert any(k.startswith("bottleneck.") for k in state["state"])
        assert any(k.startswith("decoder.") for k in state["state"])
    # test reads the protocol from the checkpoint and gives the numbers fit gave
    tested = tmp_path / "test"
    assert main(["test", "--checkpoint", str(out), "--output", str(tested), "--quiet"]) == 0
    again = json.loads((tested / "metrics.json").read_text())
    assert again["protocol"] == protocol.name and sorted(again["categories"]) == sorted(sets)
    for name in sets:
        for k in keys:
            assert again["categories"][name][k] == pytest.approx(fitted["categories"][name][k], abs=1e-6)


@pytest.mark.slow
def test_test_protocol_overrides_the_stored_one(tmp_path):
    """An AeBAD-S model evaluated under the common path instead (--protocol single): other
    metrics (pooled AUPRO, the top-1% score), other numbers."""
    root, extra, _ = _tree("aebad", tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--preset", "aebad", "--data", str(root), "--output", str(out), *TINY, *extra]) == 0
    theirs = json.loads((out / "metrics.json").read_text())
    assert (
        main(
            ["test", "--checkpoint", str(out), "--output", str(tmp_path / "common"), "--protocol", "single", "--quiet"]
        )
        == 0
    )
    common = json.loads((tmp_path / "common" / "metrics.json").read_text())
    assert common["protocol"] == "single" and set(common["categories"]["same"]) == COMMON_KEYS
    assert json.loads((tmp_path / "common" / "config.json").read_text())["protocol"]["name"] == "single"
    differs = [abs(common["categories"][d]["aupro"] - theirs["categories"][d]["aupro"]) > 1e-6 for d in DOMAINS]
    assert any(differs)
