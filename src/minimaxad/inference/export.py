"""Export the whole inference pipeline for deployment: ONNX, TorchScript, OpenVINO IR, or OpenVINO
IR with the network quantized to INT8 (``openvino-int8``, see :mod:`minimaxad.inference.quantize`).

The exported graph takes a normalised batch ``(B, 3, S, S)`` (ImageNet mean/std, S the
checkpoint's input size; B is dynamic) and returns ``anomaly_map (B, 1, S, S)``,
``image_score (B,)`` and, when the checkpoint holds a calibrated image threshold,
``is_anomalous (B,)`` (bool). Every file is checked against the PyTorch pipeline right after it
is written (batch 1 and 2, relative error below ``1e-4``); a file that fails is removed.
An existing file is never replaced or removed unless ``overwrite`` is given (``--overwrite``), and
nothing but the asked-for files (and their ``.json``) is left beside them: OpenVINO's
intermediate ONNX file is made in a temporary folder that is removed whatever happens.
``<file>.json`` beside it holds the preprocessing, the thresholds with their calibration data
(what ``minimaxad predict`` needs to run the file) and the parity check's result.

An INT8 export writes ``NAME.xml``/``.bin`` (INT8) and ``NAME.float32.xml``/``.bin``, the float32
graph it was quantized from (checked against PyTorch like any export; ``predict`` re-scores images
near the threshold with it). Its sidecar adds ``int8``: the calibration images, the layers kept in
float32, and the INT8 maps' and scores' errors against that float32 reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minimaxad.engine.checkpoint import checkpoint_tiling, read_checkpoint
from minimaxad.files import atomic_write
from minimaxad.inference.backends import BackendUnavailable, load_backend
from minimaxad.inference.graph_files import (  # noqa: F401 (public names of this module)
    FORMATS,
    PARITY_TOLERANCE,
    ExportError,
    compare_with_pipeline,
    refuse_to_overwrite,
    relative_error,
    remove_files,
    write_pipeline_file,
    written_files,
)
from minimaxad.inference.pipeline import InferencePipeline, pipeline_from_checkpoint
from minimaxad.inference.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    INT8_BACKEND,
    INT8_RECHECK_MARGIN,
    calibration_images,
    check_int8,
    compare_int8,
    float32_reference_path,
    int8_written_files,
    quantize_pipeline,
    require_int8,
    write_int8_files,
)

# ``--format`` values: the graph formats, and the INT8 OpenVINO IR
EXPORT_FORMATS = (*FORMATS, INT8_BACKEND)
# calibration images the INT8 export compares with float32 on (the maps' and scores' errors)
INT8_CHECK_IMAGES = 16


def export_pipeline(
    pipeline: InferencePipeline, output: Path, format: str, image_size: int, check: bool = True, overwrite: bool = False
) -> dict[str, float] | None:
    """Write ``pipeline`` (fused, eval) to ``output`` in ``format``; with ``check``, compare it
    with PyTorch (:func:`check_parity`), delete what was written if it fails, and return the
    relative errors. An existing file is refused unless ``overwrite``."""
    written = write_pipeline_file(pipeline, Path(output), format, image_size, overwrite=overwrite)
    if not check:
        return None
    try:
        return check_parity(pipeline, Path(output), format, image_size)
    except BaseException:
        remove_files(written)  # ours, just written: the user's earlier files were refused above
        raise


def check_parity(
    pipeline: InferencePipeline, path: Path, format: str, image_size: int, tolerance: float = PARITY_TOLERANCE
) -> dict[str, float]:
    """Run the exported file on random images at batch 1 and 2 (the batch axis is dynamic) and
    compare maps and scores with the PyTorch pipeline; raises :class:`ExportError` past
    ``tolerance`` (relative). Returns the relative errors."""
    name = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torchscript"}[format]
    try:
        backend = load_backend(path, name, device="cpu", trust=True)  # the file this process just wrote
    except BackendUnavailable as exc:
        if format == "onnx":  # ONNX Runtime is optional: check with OpenVINO when it is there instead
            try:
                backend = load_backend(path, "openvino", device="cpu")
            except BackendUnavailable:
                raise ExportError(f"cannot check {path}: {exc}") from exc
        else:
            raise ExportError(f"cannot check {path}: {exc}") from exc
    return compare_with_pipeline(backend, pipeline, image_size, label=str(path), tolerance=tolerance)


def export_metadata(
    state: dict[str, Any], format: str, parity: dict[str, float] | None, output_names: list[str]
) -> dict[str, Any]:
    """The ``<file>.json`` written beside an exported file: input and outputs, preprocessing, the
    thresholds with their calibration data, and the parity check's relative errors."""
    size = state.get("crop_size") or state["image_size"]
    return {
        "format": format,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "outputs": output_names,
        "input_size": size,
        "image_size": state["image_size"],
        "crop_size": state.get("crop_size"),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "preprocessing": f"RGB, resize to {state['image_size']} (bilinear)"
        + (f", centre crop {state['crop_size']}" if state.get("crop_size") else "")
        + ", scale to [0, 1] (more than 8 bits: white_level is 1), normalise with mean/std",
        "backbone": state["backbone"],
        "top_ratio": state.get("top_ratio", 0.01),
        "categories": state.get("categories", []),
        # a tiled model's graph maps tiles (unsmoothed); photos are cut and stitched as minimaxad.tiling says
        "tiling": state.get("tiling"),
        # photos of more than 8 bits: the value read as white (None: the full range of their type)
        "white_level": (state.get("config") or {}).get("white_level"),
        "map": "tile maps before smoothing: stitch, then smooth" if state.get("tiling") else "smoothed",
        "thresholds": state.get("thresholds") or {},
        "parity_relative_error": parity,
    }


def export(
    checkpoint: Path,
    output: Path,
    format: str | None = None,
    encoder_weights: str | None = None,
    check: bool = True,
    overwrite: bool = False,
    tiling: Any = None,
    calibration_images_count: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_data: str | Path | None = None,
) -> Path:
    """Export a trained checkpoint's re-parameterized pipeline to ``output`` (format from the
    suffix unless given: ``.onnx``, ``.xml`` for OpenVINO, else TorchScript; ``openvino-int8`` only
    when asked for) and its metadata to ``<output>.json``. Existing files are refused unless
    ``overwrite``. The batch axis of the exported graph is dynamic. A tiled model (or ``tiling``, a
    :class:`~minimaxad.inference.predict.TilingOverrides`) exports the graph of one tile's unsmoothed
    map; its sidecar holds the tiling, which ``predict``/``serve`` follow.

    ``openvino-int8`` is calibrated on ``calibration_images_count`` of the checkpoint's normal
    training images (tiles for a tiled model), or of the folder ``calibration_data``."""
    output = Path(output)
    format = format or {".onnx": "onnx", ".xml": "openvino"}.get(output.suffix.lower(), "torchscript")
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if format == INT8_BACKEND:
        require_int8()  # before the (slow) reading of the checkpoint and its calibration images
    meta_path = metadata_path(output)
    targets = int8_written_files(output) if format == INT8_BACKEND else written_files(output, format)
    if not overwrite:  # before the (slow) export, and before anything is written
        refuse_to_overwrite(targets + [meta_path])
    state = read_checkpoint(checkpoint)
    if tiling is not None:  # TilingOverrides: the file's sidecar records the tiling it is to be run with
        tiled = tiling.apply(checkpoint_tiling(state), state["image_size"])
        state = {**state, "tiling": None if tiled is None else tiled.to_dict()}
    pipeline, state = pipeline_from_checkpoint(state, encoder_weights=encoder_weights)
    size = state.get("crop_size") or state["image_size"]
    if format == INT8_BACKEND:
        meta = _export_int8(state, pipeline, output, size, check, overwrite, calibration_images_count, calibration_data)
    else:
        parity = export_pipeline(pipeline, output, format, size, check=check, overwrite=overwrite)
        meta = export_metadata(state, format, parity, pipeline.output_names)
    try:
        atomic_write(meta_path, json.dumps(meta, indent=2) + "\n")
    except BaseException:
        remove_files(targets)  # a model without its metadata cannot be run
        raise
    return output


def _export_int8(
    state: dict[str, Any],
    pipeline: InferencePipeline,
    output: Path,
    size: int,
    check: bool,
    overwrite: bool,
    count: int,
    folder: str | Path | None,
) -> dict[str, Any]:
    """Quantize, write the INT8 IR and its float32 reference, compare them on calibration images
    (unless ``check`` is False) and return the sidecar's contents."""
    images, source = calibration_images(state, count, folder)
    quantized = quantize_pipeline(pipeline, size, images)  # the float32 graph is checked against PyTorch here
    written = write_int8_files(quantized, output, overwrite=overwrite)
    errors = None
    if check:
        try:
            int8 = load_backend(output, INT8_BACKEND)
            float32 = load_backend(float32_reference_path(output), "openvino")
            errors = compare_int8(int8, float32, images[:INT8_CHECK_IMAGES])
            check_int8(errors, str(output))
        except BaseException:
            remove_files(written)
            raise
    meta = export_metadata(state, INT8_BACKEND, quantized.parity, pipeline.output_names)
    meta["float32_reference"] = {
        "file": float32_reference_path(output).name,
        "format": "openvino",
        "parity_relative_error": quantized.parity,  # against the PyTorch pipeline
    }
    meta["int8"] = {
        "calibration": source,
        "calibration_images": quantized.calibration_count,
        "kept_in_float32": ["the anomaly map, smoothing and score (every node outside /model/)"]
        + quantized.ignored_patterns,
        "preset": "performance",
        "versions": quantized.versions,
        # the INT8 maps and scores against the float32 reference, on calibration images
        "error_vs_float32": errors,
        "recheck_margin": INT8_RECHECK_MARGIN,
    }
    return meta


def metadata_path(path: Path) -> Path:
    """``<file>.json``, beside an exported model."""
    return Path(str(path) + ".json")


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``<file>.json`` written beside an exported model."""
    meta_path = metadata_path(Path(path))
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing: it holds the preprocessing and thresholds of {path}; "
            f"export again with 'minimaxad export'"
        )
    return json.loads(meta_path.read_text())
