"""UniRepLKNet encoder: stem, stages 0-2, per-stage LayerNorm outputs (frozen in MiniMaxAD)."""

from __future__ import annotations

import torch
from torch import nn

from minimaxad.models.blocks import LayerNorm2d, UniRepLKNetBlock
from minimaxad.models.registry import BackboneSpec


def draw_unused_downsample(spec: BackboneSpec) -> None:
    """Draw, and throw away, the random weights of the authors' ``downsample_layers.3``.

    Their encoder builds stage 3's downsampling conv (``d2 -> d3``, 3x3, bias) right after
    ``downsample_layers.2`` although it never runs it. Drawing the same numbers here keeps the
    global random stream in step with theirs: under one seed the random encoder, and the
    bottleneck and decoder built after it, get the authors' exact initial weights.
    """
    nn.Conv2d(spec.dims[2], spec.dims[3], 3, stride=2, padding=1)


class UniRepLKNetEncoder(nn.Module):
    """The first three stages of UniRepLKNet, returning the LayerNorm-ed stage outputs.

    Input ``(N, 3, H, W)``; output three maps ``(N, d0, H/4, W/4)``, ``(N, d1, H/8, W/8)``,
    ``(N, d2, H/16, W/16)``. The un-normalised map feeds the next stage, as in UniRepLKNet.
    State-dict keys match the authors' layout except for the unused ``downsample_layers.3`` and
    ``norm3`` (see :mod:`minimaxad.models.weights`).

    Random initialisation (what ``--encoder-weights none`` trains with) is the authors': their
    encoder leaves UniRepLKNet's truncated-normal init commented out, so every conv and linear
    keeps PyTorch's default (kaiming-uniform weights with ``a = sqrt(5)``, i.e. bound
    ``1/sqrt(fan_in)``, and uniform biases with the same bound); LayerNorms start at weight 1,
    bias 0; BatchNorms at weight 1, bias 0, running mean 0, variance 1; GRN ``gamma``/``beta`` at 0;
    the layer scale at 1e-6. Modules are created in the authors' order (see
    :func:`draw_unused_downsample`), so one seed gives their weights exactly.
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        d = spec.dims
        self.dims = tuple(d[:3])
        self.loads = 0  # state-dict loads so far: whoever caches a function of the weights checks it
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3, d[0] // 2, 3, stride=2, padding=1),
                    LayerNorm2d(d[0] // 2),
                    nn.GELU(),
                    nn.Conv2d(d[0] // 2, d[0], 3, stride=2, padding=1),
                    LayerNorm2d(d[0]),
                ),
                nn.Sequential(nn.Conv2d(d[0], d[1], 3, stride=2, padding=1), LayerNorm2d(d[1])),
                nn.Sequential(nn.Conv2d(d[1], d[2], 3, stride=2, padding=1), LayerNorm2d(d[2])),
            ]
        )
        draw_unused_downsample(spec)
        self.stages = nn.ModuleList(
            nn.Sequential(*(UniRepLKNetBlock(d[i], k) for k in spec.kernel_sizes[i])) for i in range(3)
        )
        for i in range(3):
            self.add_module(f"norm{i}", LayerNorm2d(d[i]))

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.loads += 1  # runs for encoder.load_state_dict and for any parent's
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, H, W)`` -> ``[(N, d0, H/4, W/4), (N, d1, H/8, W/8), (N, d2, H/16, W/16)]``, LayerNorm-ed."""
        features = []
        for i in range(3):
            x = self.stages[i](self.downsample_layers[i](x))
            features.append(getattr(self, f"norm{i}")(x))
        return features
