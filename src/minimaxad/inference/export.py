"""Export the whole inference pipeline for deployment: ONNX, TorchScript or OpenVINO IR.

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
        + ", scale to [0, 1], normalise with mean/std",
        "backbone": state["backbone"],
        "top_ratio": state.get("top_ratio", 0.01),
        "categories": state.get("categories", []),
        # a tiled model's graph maps tiles (unsmoothed); photos are cut and stitched as minimaxad.tiling says
        "tiling": state.get("tiling"),
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
) -> Path:
    """Export a trained checkpoint's re-parameterized pipeline to ``output`` (format from the
    suffix unless given: ``.onnx``, ``.xml`` for OpenVINO, else TorchScript) and its metadata to
    ``<output>.json``. Existing files are refused unless ``overwrite``. The batch axis of the
    exported graph is dynamic. A tiled model (or ``tiling``, a
    :class:`~minimaxad.inference.predict.TilingOverrides`) exports the graph of one tile's unsmoothed
    map; its sidecar holds the tiling, which ``predict``/``serve`` follow."""
    output = Path(output)
    format = format or {".onnx": "onnx", ".xml": "openvino"}.get(output.suffix.lower(), "torchscript")
    meta_path = metadata_path(output)
    if not overwrite:  # before the (slow) export, and before anything is written
        refuse_to_overwrite(written_files(output, format) + [meta_path])
    state = read_checkpoint(checkpoint)
    if tiling is not None:  # TilingOverrides: the file's sidecar records the tiling it is to be run with
        tiled = tiling.apply(checkpoint_tiling(state), state["image_size"])
        state = {**state, "tiling": None if tiled is None else tiled.to_dict()}
    pipeline, state = pipeline_from_checkpoint(state, encoder_weights=encoder_weights)
    size = state.get("crop_size") or state["image_size"]
    parity = export_pipeline(pipeline, output, format, size, check=check, overwrite=overwrite)
    meta = export_metadata(state, format, parity, pipeline.output_names)
    try:
        atomic_write(meta_path, json.dumps(meta, indent=2) + "\n")
    except BaseException:
        remove_files(written_files(output, format))  # a model without its metadata cannot be run
        raise
    return output


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
