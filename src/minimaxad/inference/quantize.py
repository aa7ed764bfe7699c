"""INT8 inference on the CPU: post-training quantization of the fused network with NNCF for OpenVINO.

Only the network is quantized: its convolutions and matrix products run on 8-bit integers (AVX-512
VNNI / AMX), calibrated on the model's own normal training images. The anomaly map (cosine
distances, upsampling, the Gaussian) and the score stay float32: they are kept out of NNCF's reach
(its ignored scope), and OpenVINO runs what is not quantized at float32 precision.

The graph that is quantized is the fused pipeline in its *export form* (:func:`export_form`): the
same arithmetic, with the pointwise feed-forward layers written as 1x1 convolutions on channels-first
maps instead of per-image matrix products. The training form's ``weight @ x`` products with a
per-image weight (GRN folded into the weight) give NNCF an activation-by-activation product it cannot
quantize per channel, and the channels-last alternative fills the graph with transposes; as 1x1
convolutions OpenVINO runs them as int8 ``brgconv`` kernels (measured: 2.4x ONNX Runtime float32 at
batch 1 and 3.4x at batch 16 for variant N at 256 px, against 1.6x / 1.8x for the channels-last
graph; see docs/benchmarks.md). The float32 IR of that graph is checked against PyTorch (relative
error below 1e-4) before it is quantized, and it is kept as the INT8 model's float32 reference: the
re-check near the threshold runs it, so that decisions are those of float32.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from minimaxad.inference.graph_files import (
    BackendUnavailable,
    ExportError,
    compare_with_pipeline,
    refuse_to_overwrite,
    relative_error,
    write_pipeline_file,
    written_files,
)
from minimaxad.inference.pipeline import InferencePipeline
from minimaxad.models.blocks import LayerNorm2d, UniRepLKNetBlock

INT8_BACKEND = "openvino-int8"
# Normal images NNCF collects activation ranges on: "a few hundred" is NNCF's own advice (its
# default subset is 300); fewer run faster with ranges from fewer images.
DEFAULT_CALIBRATION_IMAGES = 300
# Layers kept in float32 (NNCF's ignored scope), as regular expressions over OpenVINO node names:
# the squeeze-and-excitation gates work on pooled (B, C) vectors (no time to win; NNCF cannot read
# the range of their reshaped weights).
ALWAYS_FLOAT32 = (r".*/se/.*",)
# Layers kept in float32 because quantizing them harms the maps, chosen by measurement
# (benchmarks/bench_precision.py --sensitivity, docs/benchmarks.md "INT8"): none. Keeping a group in
# float32 lowered the scores' error at most from 1.8% to 1.1% (the decoder's upsampling layers; the
# encoder's downsampling ones to 1.2%) and cost 5-25% of INT8's speed, taking it to 2.0x ONNX
# Runtime or below at batch 16; the float32 re-check already keeps every decision. quantize_pipeline's
# ``extra_ignored`` keeps such groups in float32 where the maps themselves matter more than speed.
HARMFUL_LAYERS: tuple[str, ...] = ()
# the groups whose float32 copy lowered the INT8 error most in that measurement (``extra_ignored`` values)
LESS_ERROR_LAYERS = (r"/model/decoder/upsample_layers\..*", r"/model/encoder/downsample_layers\..*")
# The export refuses an INT8 file whose maps on the calibration images differ from float32 by more
# than this (relative): a broken quantization, not the usual INT8 noise (measured: 1-6%, see docs).
INT8_MAP_TOLERANCE = 0.25
INT8_EXTRA = "pip install 'minimaxad[int8]'"
# The default re-check margin of INT8 (``predict --recheck-margin``): images whose score lies within
# this fraction of the threshold are scored again in float32. It covers the largest score error
# measured (docs/benchmarks.md, "INT8") with room to spare.
INT8_RECHECK_MARGIN = 0.05


def require_int8() -> tuple[Any, Any]:
    """``(openvino, nncf)``, or :class:`BackendUnavailable` saying what to install."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {INT8_BACKEND} backend needs OpenVINO and NNCF, and OpenVINO is not installed: {INT8_EXTRA}"
        ) from exc
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {INT8_BACKEND} backend needs NNCF (OpenVINO's quantization library), which is not installed: "
            f"{INT8_EXTRA}"
        ) from exc
    return openvino, nncf


def int8_available() -> bool:
    """OpenVINO and NNCF are both importable (without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf", "onnx"))


# -- the graph that is quantized -----------------------------------------------------------------
def _conv_ffn(self: UniRepLKNetBlock, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:meth:`UniRepLKNetBlock.pointwise_ffn` with both Linears as 1x1 convolutions on (N, C, H, W)."""
    linear1, grn, linear2 = self.pwconv1[1], self.act[1], self.pwconv2[0]
    h = self.act[0](F.conv2d(y, linear1.weight[:, :, None, None], linear1.bias))
    h = h * grn.channel_scale(h)
    bias = linear2.bias
    if grn.use_bias:  # W (h s + beta) = W (h s) + W beta
        projected = linear2.weight @ grn.beta.reshape(-1)
        bias = projected if bias is None else bias + projected
    out = F.conv2d(h, linear2.weight[:, :, None, None], bias)
    if self.fused:  # norm and layer scale are folded into linear2
        return x + out
    out = self.pwconv2[2](out)
    return torch.addcmul(x, self.gamma.view(1, -1, 1, 1), out) if self.gamma is not None else x + out


def _channels_first_layer_norm(self: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """:class:`LayerNorm2d` over dim 1 without the permutes (OpenVINO fuses it into one MVN)."""
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=1, keepdim=True)
    return centred / torch.sqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def export_form(pipeline: InferencePipeline) -> InferencePipeline:
    """A copy of ``pipeline`` whose network computes the same with the layers OpenVINO quantizes
    best (see the module docstring); ``pipeline`` itself is left as it is."""
    form = copy.deepcopy(pipeline).eval().cpu()
    for module in form.model.modules():
        if isinstance(module, UniRepLKNetBlock):
            module.pointwise_ffn = types.MethodType(_conv_ffn, module)
        elif isinstance(module, LayerNorm2d):
            module.forward = types.MethodType(_channels_first_layer_norm, module)
    return form


def float32_scope(model: Any, extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """NNCF's ignored scope for an OpenVINO model of the pipeline: ``(names, patterns)``. Names:
    every operation outside the network (the maps, smoothing and score: ONNX gives the network's
    nodes ``/model/...`` names); patterns: :data:`ALWAYS_FLOAT32`, :data:`HARMFUL_LAYERS` and ``extra``."""
    skip = {"Parameter", "Constant", "Result"}
    names = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() not in skip and not op.get_friendly_name().startswith("/model/")
    ]
    return names, [*ALWAYS_FLOAT32, *HARMFUL_LAYERS, *extra]


# -- calibration images --------------------------------------------------------------------------
def _evenly(count: int, available: int) -> list[int]:
    """``count`` indices spread evenly over ``range(available)`` (all of them when fewer)."""
    if available <= count:
        return list(range(available))
    return sorted({int(i) for i in np.linspace(0, available - 1, count).round()})


def _tiles_of(paths: Sequence[str | Path], tiling: Any, count: int, white_level: float | None = None) -> torch.Tensor:
    """Up to ``count`` normalised tiles, spread evenly over the photos' tiles."""
    from minimaxad.data.io import load_image
    from minimaxad.data.tiles import PhotoTiler

    tiler = PhotoTiler(tiling)
    tiles = [tiler.cut(load_image(p, white_level)).tiles for p in paths]
    every = torch.cat(tiles)
    return every[_evenly(count, len(every))]


def calibration_from_folder(
    folder: str | Path,
    count: int,
    image_size: int,
    crop_size: int | None = None,
    tiling: Any = None,
    white_level: float | None = None,
) -> torch.Tensor:
    """Up to ``count`` normal images (or, for a tiled model, tiles) of ``folder`` (searched
    recursively), preprocessed as ``predict`` does (``white_level``: the model's): ``(N, 3, S, S)`` float32."""
    from minimaxad.data.io import is_image_file, load_image
    from minimaxad.data.transforms import Transform

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--calibration-data {folder}: no such folder (give a folder of normal images)")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not paths:
        raise ValueError(f"--calibration-data {folder}: no images found in it (or its subfolders)")
    if tiling is not None:
        # a few photos give many tiles: read only as many photos as could be needed
        return _tiles_of([paths[i] for i in _evenly(count, len(paths))], tiling, count, white_level)
    transform = Transform(image_size, crop_size)
    return torch.stack([transform(load_image(paths[i], white_level)) for i in _evenly(count, len(paths))])


def calibration_from_checkpoint(state: dict[str, Any], count: int, tiling: Any = None) -> torch.Tensor:
    """Up to ``count`` of the normal training images the checkpoint was trained on (its
    configuration's data, format and categories; no augmentation), spread evenly over them:
    ``(N, 3, S, S)`` float32; tiles for a tiled model (``tiling``, else the checkpoint's own)."""
    from minimaxad.engine.checkpoint import checkpoint_tiling
    from minimaxad.engine.config import RunConfig
    from minimaxad.engine.runner import open_dataset

    config = state.get("config") or {}
    where = config.get("data")
    if not where:
        raise ValueError(
            "this checkpoint does not say where its training images are: give a folder of normal images "
            "to calibrate INT8 on (--calibration-data DIR)"
        )
    try:
        run = RunConfig.from_dict(config).updated(augment=False, cache=False)
        dataset = open_dataset(run, "train", categories=state.get("categories") or None)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot read the training images at {where} to calibrate INT8 on ({exc}); give a folder of normal "
            "images instead (--calibration-data DIR)"
        ) from exc
    tiling = tiling if tiling is not None else checkpoint_tiling(state)
    if tiling is not None:
        paths = [dataset.records[i].path for i in _evenly(count, len(dataset))]
        return _tiles_of(paths, tiling, count, run.white_level)
    return torch.stack([dataset[i]["image"] for i in _evenly(count, len(dataset))])


def calibration_images(
    state: dict[str, Any], count: int = DEFAULT_CALIBRATION_IMAGES, folder: str | Path | None = None, tiling: Any = None
) -> tuple[torch.Tensor, str]:
    """The calibration images of a checkpoint (``state``): from ``folder`` when given, else from its
    training data; tiles of ``tiling`` (default: the checkpoint's) for a tiled model; and a
    description of where they came from (for the sidecar)."""
    from minimaxad.engine.checkpoint import checkpoint_tiling

    if count < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {count}")
    tiling = tiling if tiling is not None else checkpoint_tiling(state)
    unit = "tiles" if tiling is not None else "images"
    if folder is not None:
        white_level = (state.get("config") or {}).get("white_level")
        images = calibration_from_folder(
            folder, count, state["image_size"], state.get("crop_size"), tiling, white_level
        )
        return images, f"{len(images)} {unit} of {folder}"
    images = calibration_from_checkpoint(state, count, tiling)
    return images, f"{len(images)} normal training {unit} of {(state.get('config') or {}).get('data')}"


# -- quantization ----------------------------------------------------------------------------------
@dataclass
class QuantizedPipeline:
    """The INT8 OpenVINO model of a pipeline, its float32 reference, and how it was made."""

    int8: Any  # openvino.Model with FakeQuantize nodes
    float32: Any  # openvino.Model of the same (export-form) graph, float32
    parity: dict[str, float]  # float32 IR against PyTorch (relative errors)
    ignored_patterns: list[str]
    calibration_count: int
    versions: dict[str, str] = field(default_factory=dict)


def quantize_pipeline(
    pipeline: InferencePipeline,
    image_size: int,
    calibration: torch.Tensor,
    *,
    extra_ignored: Sequence[str] = (),
    preset: str = "performance",
) -> QuantizedPipeline:
    """Quantize ``pipeline``'s network to INT8 with NNCF, calibrated on ``calibration``
    (normalised ``(N, 3, S, S)`` normal images); maps, smoothing and score stay float32.

    ``preset``: NNCF's ``performance`` (symmetric activations, the fastest on CPUs) or ``mixed``.
    """
    ov, nncf = require_int8()
    if len(calibration) == 0:
        raise ValueError("INT8 calibration needs at least one normal image")
    form = export_form(pipeline)
    with tempfile.TemporaryDirectory(prefix="minimaxad-int8-") as tmp:
        onnx_path = Path(tmp) / "float32.onnx"
        write_pipeline_file(form, onnx_path, "onnx", image_size, overwrite=True)
        float32 = ov.Core().read_model(str(onnx_path))
    parity = _check_float32(float32, pipeline, image_size)
    names, patterns = float32_scope(float32, extra_ignored)
    samples = [calibration[i : i + 1].numpy().astype(np.float32) for i in range(len(calibration))]
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise ValueError(f"unknown NNCF preset {preset!r}; use performance or mixed")
    import logging

    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # one INFO line per layer otherwise
    try:
        int8 = nncf.quantize(
            float32.clone(),
            nncf.Dataset(samples),
            preset=presets[preset],
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(names=names, patterns=patterns, validate=False),
        )
    finally:
        nncf_log.setLevel(level)
    return QuantizedPipeline(
        int8, float32, parity, patterns, len(samples), {"openvino": ov.__version__, "nncf": nncf.__version__}
    )


def _check_float32(model: Any, pipeline: InferencePipeline, image_size: int) -> dict[str, float]:
    """The export form's float32 OpenVINO model reproduces PyTorch (else :class:`ExportError`)."""
    runner = _OpenVinoModelRunner(model)
    try:
        return compare_with_pipeline(runner, pipeline, image_size, label="the float32 graph quantized to INT8")
    finally:
        runner.close()


class _OpenVinoModelRunner:
    """An in-memory OpenVINO model compiled at float32 precision, called like a backend."""

    def __init__(self, model: Any) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.compiled = self.core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        results = self.compiled({0: np.ascontiguousarray(images.numpy(), dtype=np.float32)})
        maps, scores = results[self.compiled.output(0)], results[self.compiled.output(1)]
        return torch.from_numpy(np.array(maps[:, 0])), torch.from_numpy(np.array(scores))

    def close(self) -> None:
        self.compiled = None
        self.core = None


# -- files -------------------------------------------------------------------------------------------
def float32_reference_path(output: Path) -> Path:
    """``NAME.float32.xml`` beside an INT8 ``NAME.xml``: the float32 graph it was made from."""
    output = Path(output)
    return output.with_name(f"{output.stem}.float32.xml")


def int8_written_files(output: Path) -> list[Path]:
    """The files an INT8 export to ``output`` (``NAME.xml``) creates: its IR and its float32 reference's."""
    return written_files(output, "openvino") + written_files(float32_reference_path(output), "openvino")


def write_int8_files(quantized: QuantizedPipeline, output: Path, *, overwrite: bool = False) -> list[Path]:
    """Write the INT8 IR to ``output`` (``NAME.xml`` + ``.bin``) and its float32 reference beside it,
    through a staging folder renamed into place (nothing half-written is ever left); returns the files."""
    ov, _ = require_int8()
    output = Path(output)
    if output.suffix != ".xml":
        raise ValueError(f"an INT8 OpenVINO model is written as NAME.xml (+ NAME.bin), got {output}")
    targets = int8_written_files(output)
    if not overwrite:
        refuse_to_overwrite(targets)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".export", dir=output.parent))
    try:
        ov.save_model(quantized.int8, str(staging / output.name), compress_to_fp16=False)
        reference = float32_reference_path(output)
        ov.save_model(quantized.float32, str(staging / reference.name), compress_to_fp16=False)
        if not overwrite:  # again, right before the rename (another writer)
            refuse_to_overwrite(targets)
        for target in targets:
            os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def compare_int8(int8_runner: Any, float32_runner: Any, images: torch.Tensor, batch: int = 8) -> dict[str, float]:
    """Relative errors of the INT8 model's maps and scores against float32's on ``images`` (real
    normal images: random noise is not what INT8 was calibrated for)."""
    maps_q, maps_f, scores_q, scores_f = [], [], [], []
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        m, s = int8_runner(part)
        maps_q.append(m.numpy())
        scores_q.append(s.numpy())
        m, s = float32_runner(part)
        maps_f.append(m.numpy())
        scores_f.append(s.numpy())
    mq, mf = np.concatenate(maps_q), np.concatenate(maps_f)
    sq, sf = np.concatenate(scores_q), np.concatenate(scores_f)
    return {
        "map": relative_error(mq, mf),
        "score": relative_error(sq, sf),
        "score_max_relative": float(np.max(np.abs(sq - sf) / np.maximum(np.abs(sf), 1e-12))),
        "images": int(len(images)),
    }


def check_int8(errors: dict[str, float], label: str, tolerance: float = INT8_MAP_TOLERANCE) -> None:
    """Refuse an INT8 model whose maps moved more than ``tolerance`` from float32's."""
    if errors["map"] > tolerance:
        raise ExportError(
            f"{label}: INT8 maps differ from float32 by {errors['map']:.1%} (relative; allowed {tolerance:.0%}) on "
            f"the calibration images: calibrate on more or more typical normal images (--calibration-images, "
            f"--calibration-data), or use a float32 backend"
        )
