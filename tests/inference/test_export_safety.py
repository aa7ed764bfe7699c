"""Export never replaces or deletes a file it was not asked to write, leaves no temporary files
(errors included), and TorchScript files are only loaded when the caller trusts them."""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from pathlib import Path

import pytest
import torch

import minimaxad.inference.backends as backends
import minimaxad.inference.graph_files as graph_files
from minimaxad.cli import main
from minimaxad.inference.backends import UntrustedFileError, create_backend, load_backend
from minimaxad.inference.export import ExportError, export
from minimaxad.inference.predict import Predictor
from minimaxad.models import MiniMaxAD

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("onnx") is not None
pytestmark = pytest.mark.usefixtures("single_thread")
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed (pip install 'minimaxad[onnx]')")


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The process's temporary folder, pointed at an empty folder of the test's own."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@needs_ort
def test_export_refuses_to_overwrite_unless_asked(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    export(trained_checkpoint, out)
    before = digest(out), digest(Path(f"{out}.json"))
    with pytest.raises(FileExistsError, match="already exist"):
        export(trained_checkpoint, out)
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (digest(out), digest(Path(f"{out}.json"))) == before
    # only the metadata left from an earlier export: still refused (it would be replaced)
    lone = tmp_path / "other.onnx"
    Path(f"{lone}.json").write_text("{}")
    with pytest.raises(FileExistsError):
        export(trained_checkpoint, lone)
    assert not lone.exists() and Path(f"{lone}.json").read_text() == "{}"
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json", "other.onnx.json"]


@pytest.mark.openvino
@pytest.mark.skipif(not HAS_OV, reason="openvino not installed (pip install 'minimaxad[openvino]')")
def test_openvino_export_leaves_an_onnx_file_of_the_same_name_alone(trained_checkpoint, tmp_path):
    onnx = tmp_path / "model.onnx"
    export(trained_checkpoint, onnx, check=False)
    before = digest(onnx), digest(Path(f"{onnx}.json"))
    export(trained_checkpoint, tmp_path / "model.xml")
    assert (digest(onnx), digest(Path(f"{onnx}.json"))) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.bin",
        "model.onnx",
        "model.onnx.json",
        "model.xml",
        "model.xml.json",
    ]


def test_a_failed_export_leaves_nothing(trained_checkpoint, tmp_path, monkeypatch):
    """An error in the middle of writing: no partial file, no staging folder, the user's other
    files untouched."""
    (tmp_path / "keep.txt").write_text("mine")

    def half_written(pipeline, example, output):
        Path(output).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graph_files, "_write_onnx", half_written)
    with pytest.raises(OSError, match="No space left"):
        export(trained_checkpoint, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@needs_ort
def test_failed_parity_check_removes_only_the_new_file(trained_checkpoint, tmp_path, monkeypatch):
    def mismatch(*args, **kwargs):
        raise ExportError("does not reproduce the PyTorch pipeline (simulated)")

    monkeypatch.setattr("minimaxad.inference.export.compare_with_pipeline", mismatch)
    with pytest.raises(ExportError):
        export(trained_checkpoint, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


@needs_ort
def test_file_backends_leave_no_temporary_folder(private_tmp, monkeypatch):
    model = MiniMaxAD("unireplknet_micro").eval()
    backend = create_backend("onnxruntime", model, image_size=64, device="cpu")
    assert list(private_tmp.iterdir()) == []
    backend.streams, backend.chunk = 2, 1  # sessions made later need no file on disk
    maps, scores = backend(torch.randn(4, 3, 64, 64))
    assert maps.shape == (4, 64, 64) and torch.isfinite(scores).all()

    def mismatch(*args, **kwargs):
        raise ExportError("simulated parity failure")

    monkeypatch.setattr(backends, "compare_with_pipeline", mismatch)
    with pytest.raises(ExportError):
        create_backend("onnxruntime", model, image_size=64, device="cpu")
    assert list(private_tmp.iterdir()) == []


def test_torchscript_needs_trust(trained_checkpoint, synthetic_root, tmp_path, capsys):
    script = export(trained_checkpoint, tmp_path / "model.pt")
    with pytest.raises(UntrustedFileError, match="runs the program stored in it.*--trust-torchscript"):
        load_backend(script)
    with pytest.raises(UntrustedFileError, match="trust=True"):
        Predictor.from_checkpoint(script)
    photo = next((synthetic_root / "weave" / "test" / "good").glob("*.png"))
    assert main(["predict", "--checkpoint", str(script), str(photo), "--output", str(tmp_path / "p"), "--quiet"]) == 2
    assert "TorchScript" in capsys.readouterr().err
    assert not (tmp_path / "p" / "scores.csv").exists()
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(script),
                str(photo),
                "--output",
                str(tmp_path / "p"),
                "--quiet",
                "--trust-torchscript",
            ]
        )
        == 0
    )
    assert (tmp_path / "p" / "scores.csv").is_file()
