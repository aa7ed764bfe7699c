"""The whole inference pipeline as one module: normalised images in; anomaly map, image score
(and the calibrated decision) out.

This is what every backend runs and what ``minimaxad export`` writes: the network, the cosine
distance maps, the bilinear upsampling, the Gaussian and the top-1% score, in one graph on one
device, so that no per-pixel work is left to Python.
"""

from __future__ import annotations

import torch
from torch import nn

from minimaxad.anomaly_map import anomaly_map, image_score
from minimaxad.models import MiniMaxAD


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
    """

    def __init__(self, model: MiniMaxAD, top_ratio: float = 0.01, image_threshold: float | None = None,
                 compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.top_ratio = float(top_ratio)
        self.compute_dtype = compute_dtype
        self.has_threshold = image_threshold is not None
        self.register_buffer("image_threshold", torch.tensor(float(image_threshold or 0.0)), persistent=False)

    @property
    def output_names(self) -> list[str]:
        return ["anomaly_map", "image_score"] + (["is_anomalous"] if self.has_threshold else [])

    def forward(self, images: torch.Tensor):
        if images.dtype != self.compute_dtype:
            images = images.to(self.compute_dtype)
        encoder_features, decoder_features = self.model(images)
        if self.compute_dtype != torch.float32:
            encoder_features = [f.float() for f in encoder_features]
            decoder_features = [f.float() for f in decoder_features]
        maps = anomaly_map(encoder_features, decoder_features, image_size=(images.shape[-2], images.shape[-1]))
        scores = image_score(maps, self.top_ratio)
        if self.has_threshold:
            return maps, scores, scores >= self.image_threshold
        return maps, scores
