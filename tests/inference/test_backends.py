"""Every inference backend reproduces the training-form model; exported files run on their own."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from minimaxad.cli import main
from minimaxad.engine.trainer import cpu_supports_bf16
from minimaxad.inference.backends import BACKENDS, BackendUnavailable, available_backends, create_backend
from minimaxad.inference.benchmark import randomize_batchnorm
from minimaxad.inference.export import ExportError, check_parity, export, export_pipeline, relative_error
from minimaxad.inference.pipeline import InferencePipeline
from minimaxad.inference.predict import Predictor
from minimaxad.models import MiniMaxAD

SIZE = 64
# OpenVINO's cases run in their own pytest process (scripts/test.sh): with OpenVINO loaded, the
# long test process was killed by a SIGSEGV at a later child-process exit (seen only there).
OV = pytest.mark.openvino


def ov(name: str):
    return pytest.param(name, marks=OV) if name.startswith("openvino") else name


HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("onnx") is not None


def needs(name: str) -> None:
    if name == "onnxruntime" and not HAS_ORT:
        pytest.skip("onnx/onnxruntime not installed (pip install 'minimaxad[onnx]')")
    if name.startswith("openvino") and not HAS_OV:
        pytest.skip("openvino not installed (pip install 'minimaxad[openvino]')")
    if name in ("bf16", "openvino-bf16") and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bfloat16 (AVX-512 BF16 / AMX)")


@pytest.fixture(scope="module")
def random_model() -> MiniMaxAD:
    """Training form with random weights and random BatchNorm statistics (so fusing matters)."""
    torch.manual_seed(0)
    model = MiniMaxAD("unireplknet_micro").eval()
    randomize_batchnorm(model)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def reference(random_model, images):
    """Maps and scores of the training-form model."""
    return create_backend("eager", random_model, image_size=SIZE, device="cpu")(images)


@pytest.mark.parametrize("name", [ov(n) for n in ("fused", "compiled", "onnxruntime", "openvino", "torchscript")])
def test_float32_backends_equal_the_training_form(name, random_model, images, reference, tmp_path):
    needs(name)
    backend = create_backend(name, random_model, image_size=SIZE, device="cpu", workdir=tmp_path)
    maps, scores = backend(images)
    assert maps.shape == (2, SIZE, SIZE) and scores.shape == (2,)
    assert relative_error(maps, reference[0]) < 1e-4
    assert relative_error(scores, reference[1]) < 1e-4
    assert not random_model.reparameterized  # the caller's training-form model is left alone


@pytest.mark.parametrize("name", [ov(n) for n in ("bf16", "openvino-bf16")])
def test_bfloat16_backends_stay_within_1e_2(name, random_model, images, reference, tmp_path):
    needs(name)
    maps, scores = create_backend(name, random_model, image_size=SIZE, device="cpu", workdir=tmp_path)(images)
    error = relative_error(maps, reference[0])
    assert 1e-6 < error < 1e-2  # really reduced precision, and close
    assert relative_error(scores, reference[1]) < 1e-2


def test_backend_names_and_errors(random_model):
    assert {"eager", "fused", "compiled", "bf16", "onnxruntime", "openvino", "torchscript"} <= set(BACKENDS)
    assert available_backends("cpu")[:3] == ["eager", "fused", "compiled"]
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        create_backend("tensorrt", random_model, image_size=SIZE, device="cpu")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        create_backend("fp16", random_model, image_size=SIZE, device="cpu")
    fused = MiniMaxAD("unireplknet_micro").reparameterize()
    with pytest.raises(ValueError, match="training-form"):
        create_backend("eager", fused, image_size=SIZE, device="cpu")


def test_pipeline_outputs_the_decision_when_a_threshold_is_stored(random_model, images):
    pipeline = InferencePipeline(random_model, top_ratio=0.01)
    with torch.no_grad():
        maps, scores = pipeline(images)
    threshold = float(scores.mean())
    with torch.no_grad():
        maps2, scores2, decision = InferencePipeline(random_model, 0.01, image_threshold=threshold)(images)
    assert torch.equal(scores, scores2) and decision.dtype == torch.bool
    assert decision.tolist() == (scores >= threshold).tolist() and decision.any() and not decision.all()


def test_parity_check_refuses_a_file_that_does_not_match(random_model, tmp_path):
    needs("onnxruntime")
    pipeline = InferencePipeline(random_model.__class__("unireplknet_micro").reparameterize()).eval()
    path = tmp_path / "p.onnx"
    export_pipeline(pipeline, path, "onnx", SIZE)
    errors = check_parity(pipeline, path, "onnx", SIZE)
    assert max(errors.values()) < 1e-5
    with torch.no_grad():  # the file no longer matches the module
        for parameter in pipeline.model.decoder.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    with pytest.raises(ExportError, match="does not reproduce"):
        check_parity(pipeline, path, "onnx", SIZE)


# -- trained checkpoint: exports, decisions, predict ---------------------------------------------
def _test_images(synthetic_root):
    return sorted((synthetic_root).glob("*/test/*/*.png"))


@pytest.mark.parametrize("name", [ov(n) for n in ("bf16", "openvino-bf16")])
def test_reduced_precision_keeps_every_decision_on_the_synthetic_test_set(name, trained_checkpoint, synthetic_root):
    needs(name)
    paths = _test_images(synthetic_root)
    exact = Predictor.from_checkpoint(trained_checkpoint, device="cpu").predict(paths)
    reduced = Predictor.from_checkpoint(trained_checkpoint, device="cpu", backend=name).predict(paths)
    assert len(paths) == 20 and exact.image_threshold is not None
    assert relative_error(reduced.maps, exact.maps) < 1e-2
    assert reduced.is_anomalous.tolist() == exact.is_anomalous.tolist()
    margin = np.abs(exact.scores - exact.image_threshold).min() / exact.image_threshold
    assert np.abs(reduced.scores - exact.scores).max() / exact.image_threshold < margin  # not luck


FRESH_PROCESS = """
import json, sys, numpy as np
path, kind = sys.argv[1], sys.argv[2]
x = np.load(sys.argv[3])
if kind == "onnx":
    import onnxruntime
    s = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = s.run(None, {"images": x})
elif kind == "openvino":
    import openvino
    # OpenVINO computes in bf16 by default on CPUs that have it: ask for float32
    c = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    r = c(x)
    out = [r[c.output(i)] for i in range(len(c.outputs))]
else:
    import torch
    with torch.no_grad():
        out = [t.numpy() for t in torch.jit.load(path)(torch.from_numpy(x))]
print(json.dumps({"scores": out[1].tolist(), "decision": out[2].tolist(), "map_shape": list(out[0].shape)}))
"""


@pytest.mark.parametrize(
    "suffix,kind", [(".onnx", "onnx"), pytest.param(".xml", "openvino", marks=OV), (".pt", "torchscript")]
)
def test_exported_files_run_in_a_fresh_process(suffix, kind, trained_checkpoint, synthetic_root, tmp_path):
    needs({"onnx": "onnxruntime", "openvino": "openvino"}.get(kind, kind))
    out = export(trained_checkpoint, tmp_path / f"model{suffix}")
    meta = json.loads((tmp_path / f"model{suffix}.json").read_text())
    assert meta["outputs"] == ["anomaly_map", "image_score", "is_anomalous"]
    assert max(meta["parity_relative_error"].values()) < 1e-4
    assert meta["thresholds"]["normal_scores"] and meta["input_size"] == SIZE
    predictor = Predictor.from_checkpoint(trained_checkpoint, device="cpu")
    paths = _test_images(synthetic_root)[:3]
    batch, _ = predictor.preprocess(paths)  # batch 3: the batch axis is dynamic
    np.save(tmp_path / "x.npy", batch.numpy())
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(out), kind, str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = predictor.predict(paths)
    assert result["map_shape"] == [3, 1, SIZE, SIZE]
    np.testing.assert_allclose(result["scores"], expected.scores, rtol=1e-4)
    assert result["decision"] == expected.is_anomalous.tolist()


def test_predict_runs_an_exported_onnx_file_and_the_onnxruntime_backend(trained_checkpoint, synthetic_root, tmp_path):
    needs("onnxruntime")
    onnx_path = export(trained_checkpoint, tmp_path / "model.onnx")
    photos = synthetic_root / "washer" / "test"
    runs = {
        "torch": ["--checkpoint", str(trained_checkpoint)],
        "backend": ["--checkpoint", str(trained_checkpoint), "--backend", "onnxruntime"],
        "file": ["--checkpoint", str(onnx_path)],
    }
    scores = {}
    for name, args in runs.items():
        assert (
            main(["predict", *args, str(photos), "--output", str(tmp_path / name), "--device", "cpu", "--quiet"]) == 0
        )
        with open(tmp_path / name / "scores.csv") as handle:
            rows = list(csv.DictReader(handle))
        scores[name] = {r["name"]: (float(r["score"]), r["decision"]) for r in rows}
        assert (tmp_path / name / "heatmaps" / f"{rows[0]['name']}.png").is_file()
    assert json.loads((tmp_path / "file" / "scores.json").read_text())["backend"] == "onnxruntime"
    assert scores["torch"].keys() == scores["file"].keys() == scores["backend"].keys()
    for key, (score, decision) in scores["torch"].items():
        for other in ("backend", "file"):
            assert scores[other][key][0] == pytest.approx(score, rel=1e-4)
            assert scores[other][key][1] == decision


def test_benchmark_reduced_runs_every_backend_and_writes_json(tmp_path, capsys):
    backends = ["eager", "fused", "torchscript"] + (["onnxruntime"] if HAS_ORT else [])
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "benchmark",
                "--backbones",
                "unireplknet_micro",
                "--image-sizes",
                "64",
                "--batch-sizes",
                "1",
                "2",
                "--seconds",
                "0.05",
                "--device",
                "cpu",
                "--backends",
                *backends,
                "--output",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["machine"]["matmul_fp32_flops"] > 1e9 and report["flops_per_image"]["64"] > 1e6
    assert not report["not_measured"]
    rows = {(r["backend"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(b, n) for b in backends for n in (1, 2)}
    for (backend, batch), row in rows.items():
        assert row["images_per_second"] > 0 and row["latency_p95_ms"] >= row["latency_median_ms"] > 0
        assert row["map_relative_error"] < 1e-4 and row["peak_memory_mb"] > 0
        assert f"{backend:<15}   64{batch:>6}" in printed
    assert rows[("eager", 1)]["speedup_vs_eager"] == 1.0
    assert "float32 limit" in printed and "% limit" in printed


@pytest.mark.parametrize("name", [ov(n) for n in ("onnxruntime", "openvino")])
def test_streamed_batches_equal_one_session(name, random_model, tmp_path):
    """Chunks on per-core streams give the same maps and scores, in order, for any batch size."""
    needs(name)
    from minimaxad.inference.backends import load_backend

    path = create_backend(
        "onnxruntime" if name == "onnxruntime" else "openvino",
        random_model,
        image_size=SIZE,
        device="cpu",
        workdir=tmp_path,
    )
    onnx_file = tmp_path / "pipeline.onnx"
    assert onnx_file.is_file() and path is not None
    single = load_backend(onnx_file, name, device="cpu")
    single.streams = 1  # every batch through the one all-thread model
    streamed = load_backend(onnx_file, name, device="cpu")
    streamed.streams, streamed.chunk = 2, 2
    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    expected_maps, expected_scores = single(images)
    maps, scores = streamed(images)  # chunks of 2, 2, 1
    assert relative_error(maps, expected_maps) < 1e-5 and relative_error(scores, expected_scores) < 1e-5
    assert maps.shape == (5, SIZE, SIZE)


@pytest.mark.parametrize("name", [ov(n) for n in ("bf16", "openvino-bf16")])
def test_scores_near_the_threshold_are_rechecked_in_float32(name, trained_checkpoint, synthetic_root):
    """A threshold placed exactly on an image's float32 score: reduced precision alone would
    decide that image by a coin toss; the float32 re-check decides it as float32 does."""
    needs(name)
    paths = _test_images(synthetic_root)
    exact = Predictor.from_checkpoint(trained_checkpoint, device="cpu").predict(paths)
    k = int(np.argsort(exact.scores)[len(paths) // 2])
    threshold = float(exact.scores[k])
    reduced = Predictor.from_checkpoint(trained_checkpoint, device="cpu", backend=name, image_threshold=threshold)
    assert reduced.recheck_margin == 0.01
    result = reduced.predict(paths)
    assert result.rechecked[k] and result.rechecked.sum() < len(paths)
    assert result.scores[k] == pytest.approx(exact.scores[k], rel=1e-6)  # float32's own score
    assert result.is_anomalous.tolist() == (exact.scores >= threshold).tolist()
    off = Predictor.from_checkpoint(
        trained_checkpoint, device="cpu", backend=name, image_threshold=threshold, recheck_margin=0
    ).predict(paths)
    assert not off.rechecked.any()
