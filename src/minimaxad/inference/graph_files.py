"""Writing the inference pipeline as a file (ONNX, TorchScript, OpenVINO IR) and comparing a
runtime's outputs with PyTorch's.

This is the lowest layer of deployment: it knows nothing of backends or checkpoints, so that
:mod:`~minimaxad.inference.backends` (which exports to a temporary folder to run a file
backend) and :mod:`~minimaxad.inference.export` (which exports for the user and checks the file
in a backend) both build on it without importing each other.

Files are written next to their final name under a temporary name and renamed into place once
complete: a failed or interrupted export never leaves a half-written model, and an existing file
is only replaced when the caller said so (``overwrite``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minimaxad.inference.pipeline import InferencePipeline

FORMATS = ("onnx", "torchscript", "openvino")
PARITY_TOLERANCE = 1e-4  # relative: max |exported - torch| / max |torch|


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (missing package, no CUDA, no bf16 support)."""


class ExportError(RuntimeError):
    """The exported file does not reproduce the PyTorch pipeline, or cannot be written."""


@contextlib.contextmanager
def quiet_tracing():
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


def written_files(output: Path, format: str) -> list[Path]:
    """The files an export to ``output`` creates: OpenVINO IR is ``NAME.xml`` + ``NAME.bin``."""
    output = Path(output)
    return [output, output.with_suffix(".bin")] if format == "openvino" else [output]


def refuse_to_overwrite(paths: list[Path]) -> None:
    """Raise :class:`FileExistsError` naming every one of ``paths`` that exists (a dangling link too)."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise FileExistsError(
            f"{', '.join(existing)} already exist(s); pass --overwrite (overwrite=True) to "
            f"replace, or choose another --output"
        )


def write_pipeline_file(
    pipeline: InferencePipeline, output: Path, format: str, image_size: int, *, overwrite: bool = False
) -> list[Path]:
    """Write ``pipeline`` (fused, eval, on the CPU) to ``output`` in ``format`` and return the
    files written. Everything is first written in a temporary folder beside ``output`` (removed
    whatever happens, errors included) and renamed into place at the end; without
    ``overwrite`` an existing file is never touched."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    output = Path(output)
    if format == "openvino" and output.suffix != ".xml":
        raise ValueError(f"an OpenVINO model is written as NAME.xml (+ NAME.bin), got {output}")
    targets = written_files(output, format)
    if not overwrite:
        refuse_to_overwrite(targets)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = pipeline.eval().cpu()
    example = torch.randn(1, 3, image_size, image_size)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".export", dir=output.parent))
    try:
        staged = staging / output.name
        if format == "torchscript":
            with torch.no_grad(), quiet_tracing():
                traced = torch.jit.trace(pipeline, example, check_trace=False)
            traced.save(str(staged))
        elif format == "onnx":
            _write_onnx(pipeline, example, staged)
        else:  # OpenVINO IR: through ONNX (in the staging folder), which OpenVINO reads natively
            _write_openvino(pipeline, example, staged)
        if not overwrite:  # the same check again, right before the rename (another writer)
            refuse_to_overwrite(targets)
        for target in targets:
            os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def remove_files(paths: list[Path]) -> None:
    """Delete ``paths`` that exist; missing ones are fine."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def _write_onnx(pipeline: InferencePipeline, example: torch.Tensor, output: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError as exc:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'minimaxad[onnx]'") from exc
    names = pipeline.output_names
    with torch.no_grad(), quiet_tracing():
        torch.onnx.export(
            pipeline,
            (example,),
            str(output),
            input_names=["images"],
            output_names=names,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=17,
            dynamo=False,
        )


def _write_openvino(pipeline: InferencePipeline, example: torch.Tensor, output: Path) -> None:
    try:
        import openvino as ov
    except ImportError as exc:
        raise RuntimeError("OpenVINO export needs OpenVINO: pip install 'minimaxad[openvino]'") from exc
    onnx_path = output.with_suffix(".onnx")  # inside the staging folder: never beside the user's files
    _write_onnx(pipeline, example, onnx_path)
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(output), compress_to_fp16=False)


Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def compare_with_pipeline(
    runner: Runner, pipeline: InferencePipeline, image_size: int, label: str, tolerance: float = PARITY_TOLERANCE
) -> dict[str, float]:
    """Run ``runner`` (a loaded file's backend) on random images at batch 1 and 2 (the batch axis
    is dynamic) and compare maps and scores with ``pipeline``; raises :class:`ExportError` past
    ``tolerance`` (relative). Returns the relative errors."""
    generator = torch.Generator().manual_seed(0)
    errors = {"map": 0.0, "score": 0.0}
    for batch in (1, 2):
        images = torch.randn(batch, 3, image_size, image_size, generator=generator)
        with torch.no_grad():
            expected = pipeline(images)
        maps, scores = runner(images)
        errors["map"] = max(errors["map"], relative_error(maps.numpy(), expected[0][:, 0].numpy()))
        errors["score"] = max(errors["score"], relative_error(scores.numpy(), expected[1].numpy()))
    if max(errors.values()) > tolerance:
        raise ExportError(
            f"{label} does not reproduce the PyTorch pipeline: relative error map "
            f"{errors['map']:.2e}, score {errors['score']:.2e} (allowed {tolerance:g}); "
            f"please report this with your torch/runtime versions"
        )
    return errors
