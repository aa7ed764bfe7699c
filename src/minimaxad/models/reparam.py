"""Structural re-parameterization: the arithmetic that folds branches and BatchNorms.

The modules call these helpers from their own ``reparameterize()`` methods; keeping the
maths here makes each fusion testable on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def fuse_conv_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a convolution into the convolution.

    Returns ``(weight, bias)`` with ``conv'(x) == bn(conv(x))`` for the running statistics.
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    conv_bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    fused_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_bias = bn.bias + (conv_bias - bn.running_mean) * scale
    return fused_weight, fused_bias


@torch.no_grad()
def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Turn a depthwise kernel ``(C, 1, k, k)`` with dilation ``r`` into the equivalent dense
    kernel of size ``r * (k - 1) + 1`` (zeros between the taps)."""
    if dilation == 1:
        return kernel
    channels, _, k, _ = kernel.shape
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(channels, 1, size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


@torch.no_grad()
def merge_centered(large_kernel: torch.Tensor, small_kernel: torch.Tensor) -> torch.Tensor:
    """Add a smaller square kernel to the centre of a larger one."""
    pad = (large_kernel.shape[-1] - small_kernel.shape[-1]) // 2
    return large_kernel + F.pad(small_kernel, [pad] * 4)


def replace_with_conv(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A new ``nn.Conv2d`` with the geometry of ``template`` and the given fused weights."""
    conv = nn.Conv2d(
        template.in_channels,
        template.out_channels,
        kernel_size=weight.shape[-2:],
        stride=template.stride,
        padding=weight.shape[-1] // 2 if template.dilation == (1, 1) else template.padding,
        dilation=1,
        groups=template.groups,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    conv.weight.requires_grad_(template.weight.requires_grad)
    conv.bias.requires_grad_(template.weight.requires_grad)
    return conv


class Reparameterizable:
    """Marker for modules with an idempotent, in-place ``reparameterize()`` that fuses their own
    training-time structure (branches, BatchNorms) into plain layers."""

    def reparameterize(self) -> None:  # pragma: no cover - interface
        """Fuse this module's own branches and BatchNorms in place; a second call does nothing."""
        raise NotImplementedError


def reparameterize_module(module: nn.Module) -> nn.Module:
    """Fuse every :class:`Reparameterizable` inside ``module`` (children before parents)."""
    for sub in reversed(list(module.modules())):
        if isinstance(sub, Reparameterizable):
            sub.reparameterize()
    return module
