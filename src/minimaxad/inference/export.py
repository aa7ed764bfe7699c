"""Export the whole inference pipeline for deployment: ONNX, TorchScript or OpenVINO IR.

The exported graph takes a normalised batch ``(B, 3, S, S)`` (ImageNet mean/std, S the
checkpoint's input size; B is dynamic) and returns ``anomaly_map (B, 1, S, S)``,
``image_score (B,)`` and, when the checkpoint holds a calibrated image threshold,
``is_anomalous (B,)`` (bool). Every file is checked against the PyTorch pipeline right after it
is written (batch 1 and 2, relative error below ``1e-4``); a file that fails is removed.
``<file>.json`` beside it holds the preprocessing, the thresholds with their calibration data
(what ``minimaxad predict`` needs to run the file) and the parity check's result.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint
from minimaxad.inference.pipeline import InferencePipeline

FORMATS = ("onnx", "torchscript", "openvino")
PARITY_TOLERANCE = 1e-4  # relative: max |exported - torch| / max |torch|


class ExportError(RuntimeError):
    """The exported file does not reproduce the PyTorch pipeline."""


# kept for code written against the first export API
AnomalyScorer = InferencePipeline


@contextlib.contextmanager
def _quiet_tracing():
    """The image size is fixed at export: shape-dependent Python values are meant as constants,
    so the tracer's warnings about them (and the TorchScript deprecation notice) are noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        yield


def relative_error(actual: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|`` (0 when both are all zeros)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(e).max()) if e.size else 0.0
    diff = float(np.abs(a - e).max()) if e.size else 0.0
    return diff / scale if scale > 0 else diff


def export_pipeline(pipeline: InferencePipeline, output: Path, format: str, image_size: int,
                    check: bool = True) -> dict[str, float] | None:
    """Write ``pipeline`` (fused, eval) to ``output`` in ``format``; with ``check``, compare it
    with PyTorch (:func:`check_parity`), delete it if it fails, and return the relative errors."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = pipeline.eval().cpu()
    example = torch.randn(1, 3, image_size, image_size)
    if format == "torchscript":
        with torch.no_grad(), _quiet_tracing():
            traced = torch.jit.trace(pipeline, example, check_trace=False)
        traced.save(str(output))
    elif format == "onnx":
        _export_onnx(pipeline, example, output)
    else:  # OpenVINO IR: through ONNX, which OpenVINO reads natively
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeError("OpenVINO export needs OpenVINO: pip install 'minimaxad[openvino]'") from exc
        if output.suffix != ".xml":
            raise ValueError(f"an OpenVINO model is written as NAME.xml (+ NAME.bin), got {output}")
        onnx_path = output.with_suffix(".onnx")
        _export_onnx(pipeline, example, onnx_path)
        ov.save_model(ov.Core().read_model(str(onnx_path)), str(output), compress_to_fp16=False)
        onnx_path.unlink()
    if not check:
        return None
    try:
        return check_parity(pipeline, output, format, image_size)
    except Exception:
        _remove(output)
        raise


def _remove(output: Path) -> None:
    output.unlink(missing_ok=True)
    if output.suffix == ".xml":
        output.with_suffix(".bin").unlink(missing_ok=True)


def _export_onnx(pipeline: InferencePipeline, example: torch.Tensor, output: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError as exc:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'minimaxad[onnx]'") from exc
    names = pipeline.output_names
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(pipeline, (example,), str(output), input_names=["images"], output_names=names,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=17, dynamo=False)


def check_parity(pipeline: InferencePipeline, path: Path, format: str, image_size: int,
                 tolerance: float = PARITY_TOLERANCE) -> dict[str, float]:
    """Run the exported file on random images at batch 1 and 2 (the batch axis is dynamic) and
    compare maps and scores with the PyTorch pipeline; raises :class:`ExportError` past
    ``tolerance`` (relative). Returns the relative errors."""
    from minimaxad.inference.backends import BackendUnavailable, load_backend

    name = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torchscript"}[format]
    try:
        backend = load_backend(path, name, device="cpu")
    except BackendUnavailable as exc:
        if format == "onnx":  # ONNX Runtime is optional: check with OpenVINO when it is there instead
            try:
                backend = load_backend(path, "openvino", device="cpu")
            except BackendUnavailable:
                raise ExportError(f"cannot check {path}: {exc}") from exc
        else:
            raise ExportError(f"cannot check {path}: {exc}") from exc
    generator = torch.Generator().manual_seed(0)
    errors = {"map": 0.0, "score": 0.0}
    for batch in (1, 2):
        images = torch.randn(batch, 3, image_size, image_size, generator=generator)
        with torch.no_grad():
            expected = pipeline(images)
        maps, scores = backend(images)
        errors["map"] = max(errors["map"], relative_error(maps.numpy(), expected[0][:, 0].numpy()))
        errors["score"] = max(errors["score"], relative_error(scores.numpy(), expected[1].numpy()))
    if max(errors.values()) > tolerance:
        raise ExportError(f"{path} does not reproduce the PyTorch pipeline: relative error map "
                          f"{errors['map']:.2e}, score {errors['score']:.2e} (allowed {tolerance:g}); "
                          f"please report this with your torch/{format} versions")
    return errors


def export_metadata(state: dict[str, Any], format: str, parity: dict[str, float] | None,
                    output_names: list[str]) -> dict[str, Any]:
    size = state.get("crop_size") or state["image_size"]
    return {
        "format": format,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "outputs": output_names,
        "input_size": size, "image_size": state["image_size"], "crop_size": state.get("crop_size"),
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "preprocessing": f"RGB, resize to {state['image_size']} (bilinear)"
                         + (f", centre crop {state['crop_size']}" if state.get("crop_size") else "")
                         + ", scale to [0, 1], normalise with mean/std",
        "backbone": state["backbone"], "top_ratio": state.get("top_ratio", 0.01),
        "categories": state.get("categories", []),
        "thresholds": state.get("thresholds") or {},
        "parity_relative_error": parity,
    }


def export(checkpoint: Path, output: Path, format: str | None = None, encoder_weights: str | None = None,
           batch_size: int = 1, check: bool = True) -> Path:
    """Export a trained checkpoint's re-parameterized pipeline to ``output`` (format from the
    suffix unless given: ``.onnx``, ``.xml`` for OpenVINO, else TorchScript). ``batch_size`` is
    kept for compatibility: the batch axis of ONNX/OpenVINO files is dynamic."""
    output = Path(output)
    state = read_checkpoint(checkpoint)
    model = model_from_checkpoint(state, encoder_weights=encoder_weights).reparameterize().eval()
    threshold = ((state.get("thresholds") or {}).get("image") or {}).get("value")
    pipeline = InferencePipeline(model, state.get("top_ratio", 0.01), threshold).eval()
    size = state.get("crop_size") or state["image_size"]
    format = format or {".onnx": "onnx", ".xml": "openvino"}.get(output.suffix.lower(), "torchscript")
    parity = export_pipeline(pipeline, output, format, size, check=check)
    meta = export_metadata(state, format, parity, pipeline.output_names)
    output.with_suffix(output.suffix + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return output


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``<file>.json`` written beside an exported model."""
    meta_path = Path(str(path) + ".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: it holds the preprocessing and thresholds of {path}; "
                                f"export again with 'minimaxad export'")
    return json.loads(meta_path.read_text())
