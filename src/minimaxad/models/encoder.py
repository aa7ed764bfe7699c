"""UniRepLKNet encoder: stem, stages 0-2, per-stage LayerNorm outputs (frozen in MiniMaxAD)."""

from __future__ import annotations

import torch
from torch import nn

from minimaxad.models.blocks import LayerNorm2d, UniRepLKNetBlock
from minimaxad.models.registry import BackboneSpec


def init_unireplknet_weights(module: nn.Module) -> None:
    """UniRepLKNet's own initialisation: truncated normal (std 0.02) for convs and linears."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class UniRepLKNetEncoder(nn.Module):
    """The first three stages of UniRepLKNet, returning the LayerNorm-ed stage outputs.

    Input ``(N, 3, H, W)``; output three maps ``(N, d0, H/4, W/4)``, ``(N, d1, H/8, W/8)``,
    ``(N, d2, H/16, W/16)``. The un-normalised map feeds the next stage, as in UniRepLKNet.
    State-dict keys match the authors' layout except for the unused ``downsample_layers.3`` and
    ``norm3`` (see :mod:`minimaxad.models.weights`).
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        d = spec.dims
        self.dims = tuple(d[:3])
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3, d[0] // 2, 3, stride=2, padding=1),
                LayerNorm2d(d[0] // 2),
                nn.GELU(),
                nn.Conv2d(d[0] // 2, d[0], 3, stride=2, padding=1),
                LayerNorm2d(d[0]),
            ),
            nn.Sequential(nn.Conv2d(d[0], d[1], 3, stride=2, padding=1), LayerNorm2d(d[1])),
            nn.Sequential(nn.Conv2d(d[1], d[2], 3, stride=2, padding=1), LayerNorm2d(d[2])),
        ])
        self.stages = nn.ModuleList(
            nn.Sequential(*(UniRepLKNetBlock(d[i], k) for k in spec.kernel_sizes[i]))
            for i in range(3)
        )
        for i in range(3):
            self.add_module(f"norm{i}", LayerNorm2d(d[i]))
        self.apply(init_unireplknet_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(3):
            x = self.stages[i](self.downsample_layers[i](x))
            features.append(getattr(self, f"norm{i}")(x))
        return features
