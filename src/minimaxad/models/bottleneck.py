"""MiniMaxAD bottleneck: fuse the three encoder levels into one 1/32 map."""

from __future__ import annotations

import torch
from torch import nn

from minimaxad.models.blocks import UniRepLKNetBlock
from minimaxad.models.convolutions import StridedConv2d
from minimaxad.models.reparam import Reparameterizable, fuse_conv_bn, replace_with_conv


def conv3x3(in_channels: int, out_channels: int, stride: int = 2) -> nn.Conv2d:
    """A 3x3 :class:`StridedConv2d`, padding 1, no bias: with the default stride 2 it halves ``H`` and ``W``."""
    return StridedConv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def init_reconstruction_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) for convs and BatchNorm at weight 1, bias 0, as the authors."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Bottleneck(nn.Module, Reparameterizable):
    """``l1 = conv2(conv1(f0))``, ``l2 = conv3(f1)``, ``l3 = f2`` (each conv s2 + BN + ReLU), then
    ``conv4(cat(l1, l2, l3))`` (s2, no norm) and two kernel-3 blocks at ``d3``.

    Input: encoder maps ``(N, d0, H/4)``, ``(N, d1, H/8)``, ``(N, d2, H/16)``;
    output ``(N, d3, H/32, W/32)``.
    """

    def __init__(self, dims: tuple[int, int, int, int], num_blocks: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        d0, d1, d2, d3 = dims
        # Built and initialised in the authors' order (their blocks come first), so that under
        # one seed the random draws, and hence the initial weights, are theirs exactly.
        blocks = nn.Sequential(*(UniRepLKNetBlock(d3, kernel_size) for _ in range(num_blocks)))
        self.conv1, self.bn1 = conv3x3(d0, d1), nn.BatchNorm2d(d1)
        self.conv2, self.bn2 = conv3x3(d1, d2), nn.BatchNorm2d(d2)
        self.conv3, self.bn3 = conv3x3(d1, d2), nn.BatchNorm2d(d2)
        self.conv4 = conv3x3(3 * d2, d3)
        self.relu = nn.ReLU(inplace=True)
        self.stages = nn.ModuleList([blocks])
        for module in (*blocks.modules(), *self.children()):
            init_reconstruction_weights(module)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The encoder's ``[(N, d0, H/4, W/4), (N, d1, H/8, W/8), (N, d2, H/16, W/16)]`` -> ``(N, d3, H/32, W/32)``."""
        f0, f1, f2 = features
        l1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(f0))))))
        l2 = self.relu(self.bn3(self.conv3(f1)))
        x = self.conv4(torch.cat([l1, l2, f2], dim=1))
        return self.stages[0](x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``bn1``-``bn3`` into ``conv1``-``conv3`` and replace them by ``nn.Identity`` (idempotent).

        The blocks are not touched here: :func:`reparameterize_module` fuses them on their own.
        """
        for i in (1, 2, 3):
            bn = getattr(self, f"bn{i}")
            if isinstance(bn, nn.BatchNorm2d):
                conv = getattr(self, f"conv{i}")
                weight, bias = fuse_conv_bn(conv.weight, conv.bias, bn)
                setattr(self, f"conv{i}", replace_with_conv(conv, weight, bias))
                setattr(self, f"bn{i}", nn.Identity())
