"""Export a trained, re-parameterized model for deployment: TorchScript or ONNX.

The exported graph takes a normalised batch ``(B, 3, S, S)`` (ImageNet mean/std, S the
checkpoint's image size) and returns ``(anomaly_map (B, 1, S, S), image_score (B,))``.
The thresholds and preprocessing are written beside it as ``<file>.json``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from minimaxad.anomaly_map import anomaly_map, image_score
from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint
from minimaxad.models import MiniMaxAD


class AnomalyScorer(nn.Module):
    """images ``(B, 3, S, S)`` -> smoothed anomaly map ``(B, 1, S, S)`` and image score ``(B,)``."""

    def __init__(self, model: MiniMaxAD, top_ratio: float = 0.01) -> None:
        super().__init__()
        self.model = model
        self.top_ratio = top_ratio

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoder_features, decoder_features = self.model(images)
        maps = anomaly_map(encoder_features, decoder_features, image_size=(images.shape[-2], images.shape[-1]))
        return maps, image_score(maps, self.top_ratio)


@contextlib.contextmanager
def _quiet_tracing():
    """The image size is fixed at export: shape-dependent Python values are meant as constants,
    so the tracer's warnings about them (and the TorchScript deprecation notice) are noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        yield


def export(checkpoint: Path, output: Path, format: str | None = None, encoder_weights: str | None = None,
           batch_size: int = 1) -> Path:
    state = read_checkpoint(checkpoint)
    model = model_from_checkpoint(state, encoder_weights=encoder_weights).reparameterize().eval()
    scorer = AnomalyScorer(model, state.get("top_ratio", 0.01)).eval()
    size = state.get("crop_size") or state["image_size"]
    example = torch.randn(batch_size, 3, size, size)
    format = format or ("onnx" if output.suffix == ".onnx" else "torchscript")
    output.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":
        with torch.no_grad(), _quiet_tracing():
            traced = torch.jit.trace(scorer, example, check_trace=False)
        traced.save(str(output))
    elif format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("ONNX export needs the onnx package: pip install 'minimaxad[onnx]'") from exc
        with torch.no_grad(), _quiet_tracing():
            torch.onnx.export(scorer, (example,), str(output), input_names=["images"],
                              output_names=["anomaly_map", "image_score"],
                              dynamic_axes={"images": {0: "batch"}, "anomaly_map": {0: "batch"},
                                            "image_score": {0: "batch"}},
                              opset_version=17, dynamo=False)
    else:
        raise ValueError(f"unknown export format {format!r}; use torchscript or onnx")
    meta = {"input_size": size, "image_size": state["image_size"], "crop_size": state.get("crop_size"),
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "backbone": state["backbone"],
            "thresholds": {k: v for k, v in (state.get("thresholds") or {}).items() if k in ("image", "pixel")},
            "outputs": ["anomaly_map (B,1,S,S)", "image_score (B,)"]}
    output.with_suffix(output.suffix + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return output
