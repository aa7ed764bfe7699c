"""MiniMaxAD decoder: mirrors the encoder's stages 2, 1, 0 with transposed-conv upsampling."""

from __future__ import annotations

import torch
from torch import nn

from minimaxad.models.blocks import LayerNorm2d, UniRepLKNetBlock
from minimaxad.models.bottleneck import init_reconstruction_weights
from minimaxad.models.registry import BackboneSpec


class Decoder(nn.Module):
    """For i = 0, 1, 2: ConvTranspose2d(d[3-i] -> d[2-i], 2, s2, no bias) -> LayerNorm -> the
    blocks of encoder stage 2-i.

    Input ``(N, d3, H/32, W/32)``; output, ordered like the encoder's:
    ``[(N, d0, H/4, W/4), (N, d1, H/8, W/8), (N, d2, H/16, W/16)]`` (no final norm).
    ``stages[i]`` holds the blocks mirroring encoder stage ``i`` (the authors' key layout).
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        d = spec.dims
        self.upsample_layers = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(d[3 - i], d[2 - i], kernel_size=2, stride=2, bias=False), LayerNorm2d(d[2 - i])
            )
            for i in range(3)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(UniRepLKNetBlock(d[i], k) for k in spec.kernel_sizes[i])) for i in range(3)
        )
        self.apply(init_reconstruction_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, d3, H/32, W/32)`` -> ``[(N, d0, H/4, W/4), (N, d1, H/8, W/8), (N, d2, H/16, W/16)]``."""
        outputs = []
        for i in range(3):
            x = self.stages[2 - i](self.upsample_layers[i](x))
            outputs.append(x)
        return outputs[::-1]
