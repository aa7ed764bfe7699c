"""The whole inference pipeline as one module: normalised images in; anomaly map, image score
(and the calibrated decision) out.

This is what every backend runs and what ``minimaxad export`` writes: the network, the cosine
distance maps, the bilinear upsampling, the Gaussian and the top-1% score, in one graph on one
device, so that no per-pixel work is left to Python.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minimaxad.anomaly_map import anomaly_map, image_score
from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint
from minimaxad.models import MiniMaxAD

# the forms build_pipeline makes: the training-form network, the fused one, fused at reduced precision
PIPELINE_FORMS = {"eager": torch.float32, "fused": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class InferencePipeline(nn.Module):
    """``images (B, 3, S, S)`` (ImageNet-normalised) -> ``anomaly_map (B, 1, S, S)``,
    ``image_score (B,)`` and, when ``image_threshold`` is given, ``is_anomalous (B,)`` (bool).

    Args:
        model: a trained :class:`MiniMaxAD` (re-parameterize it first for speed).
        top_ratio: image score = mean of this fraction of the highest pixels (0: the max).
        image_threshold: stored decision threshold; None leaves the decision out.
        compute_dtype: dtype the network runs in (``torch.bfloat16`` / ``torch.float16`` for the
            reduced-precision paths). Maps and scores are always computed in float32 from the
            features, so only the network's arithmetic is reduced.
        smooth: False leaves the Gaussian out: the maps of a tiled model's tiles, which are
            stitched into the photo's map first and smoothed there (:mod:`minimaxad.tiling`).
    """

    def __init__(
        self,
        model: MiniMaxAD,
        top_ratio: float = 0.01,
        image_threshold: float | None = None,
        compute_dtype: torch.dtype = torch.float32,
        smooth: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.smooth = bool(smooth)
        self.top_ratio = float(top_ratio)
        self.compute_dtype = compute_dtype
        self.has_threshold = image_threshold is not None
        self.register_buffer("image_threshold", torch.tensor(float(image_threshold or 0.0)), persistent=False)

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs, in order: ``is_anomalous`` only when a threshold is built in."""
        return ["anomaly_map", "image_score"] + (["is_anomalous"] if self.has_threshold else [])

    def forward(self, images: torch.Tensor):
        """Normalised images ``(B, 3, S, S)`` -> ``anomaly_map (B, 1, S, S)``, ``image_score (B,)``
        and, with a threshold, ``is_anomalous (B,)``; maps and scores in float32 whatever the compute dtype."""
        if images.dtype != self.compute_dtype:
            images = images.to(self.compute_dtype)
        encoder_features, decoder_features = self.model(images)
        if self.compute_dtype != torch.float32:
            encoder_features = [f.float() for f in encoder_features]
            decoder_features = [f.float() for f in decoder_features]
        maps = anomaly_map(
            encoder_features, decoder_features, image_size=(images.shape[-2], images.shape[-1]), smooth=self.smooth
        )
        scores = image_score(maps, self.top_ratio)
        if self.has_threshold:
            return maps, scores, scores >= self.image_threshold
        return maps, scores


def fused_copy(model: MiniMaxAD) -> MiniMaxAD:
    """A re-parameterized copy of a training-form model; a fused model is used as it is."""
    return model if model.reparameterized else copy.deepcopy(model).reparameterize()


def build_pipeline(
    model: MiniMaxAD,
    form: str = "fused",
    *,
    top_ratio: float = 0.01,
    image_threshold: float | None = None,
    private_copy: bool = False,
    smooth: bool = True,
) -> InferencePipeline:
    """The one place an :class:`InferencePipeline` is made (backends, export and predict use it).

    ``form``: ``eager`` (the training-form network, copied: ``model`` must not be fused),
    ``fused`` (re-parameterized; an already fused ``model`` is used as it is unless
    ``private_copy``, e.g. when an export will move it to the CPU), ``bf16``/``fp16`` (a fused
    copy cast to that dtype; the float32 model stays as it was, for re-checks).
    """
    if form not in PIPELINE_FORMS:
        raise ValueError(f"unknown pipeline form {form!r}; use one of {', '.join(PIPELINE_FORMS)}")
    if form == "eager":
        if model.reparameterized:
            raise ValueError(
                "the eager backend is the training-form model, but this model is re-parameterized; "
                "pass the model before reparameterize()"
            )
        return InferencePipeline(copy.deepcopy(model), top_ratio, image_threshold, smooth=smooth)
    network = fused_copy(model)
    dtype = PIPELINE_FORMS[form]
    if (private_copy or dtype != torch.float32) and network is model:
        network = copy.deepcopy(network)
    return InferencePipeline(network.to(dtype), top_ratio, image_threshold, compute_dtype=dtype, smooth=smooth)


def pipeline_from_checkpoint(
    checkpoint: dict[str, Any] | str | Path, encoder_weights: str | Path | None = None
) -> tuple[InferencePipeline, dict[str, Any]]:
    """The fused pipeline of a trained checkpoint with its top ratio and calibrated image
    threshold (the decision output), and the checkpoint's dict (for the metadata). A tiled
    model's pipeline gives the unsmoothed maps of tiles (no decision: that needs the whole photo)."""
    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    model = model_from_checkpoint(state, encoder_weights=encoder_weights)
    tiled = state.get("tiling") is not None
    threshold = None if tiled else ((state.get("thresholds") or {}).get("image") or {}).get("value")
    pipeline = build_pipeline(
        model, "fused", top_ratio=state.get("top_ratio", 0.01), image_threshold=threshold, smooth=not tiled
    )
    return pipeline.eval(), state
