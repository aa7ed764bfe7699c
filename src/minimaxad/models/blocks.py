"""Building blocks of UniRepLKNet as used by MiniMaxAD.

Attribute names mirror the authors' code (``dwconv``, ``pwconv1.1``, ``act.1.gamma`` ...), so
their checkpoints load without renaming. Shapes: ``N`` batch, ``C`` channels, ``H x W`` space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimaxad.models.convolutions import DepthwiseConv2d
from minimaxad.models.reparam import (
    Reparameterizable,
    dilated_to_dense,
    fuse_conv_bn,
    merge_centered,
    replace_with_conv,
)

# Parallel dilated branches of the Dilated Reparam block: kernel size -> (kernels, dilations).
DILATED_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D map stored ``(N, H, W, C)`` in memory (``torch.channels_last``)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map ``(N, C, H, W) -> (N, C, H, W)``.

    The output keeps the input's memory layout: a channels-last result fed to the next
    convolution would make oneDNN reorder that convolution's weights on every call.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``, normalised over ``C``, in the input's memory layout."""
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2).contiguous(memory_format=layout)


def pointwise_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``nn.Linear`` over the channels of a map: ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    The authors permute to ``(N, H, W, C)`` and back around every Linear; here the product runs
    in the layout the map arrives in, so nothing is copied: a channels-first map as
    ``weight @ x.view(N, C_in, H*W)`` (one GEMM per image), a channels-last one as a Linear on
    its ``(N, H, W, C)`` view. ``weight`` is ``(C_out, C_in)``, or ``(N, C_out, C_in)`` for one
    weight per image; ``residual`` (``(N, C_out, H, W)``) is added inside the GEMM.
    """
    n, _, h, w = x.shape
    per_image = weight.dim() == 3
    if is_channels_last(x) and not per_image:
        y = F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
        return y if residual is None else y + residual
    flat = x.reshape(n, x.shape[1], h * w)
    out_channels = weight.shape[-2]
    acc = None
    if residual is not None:
        acc = residual.reshape(n, out_channels, h * w)
        acc = acc if bias is None else acc + bias[:, None]
    elif bias is not None:
        acc = bias[:, None]
    # a plain matrix product: cheaper dispatch than a batch of one (not while tracing for export:
    # the branch would fix the exported graph's batch size at 1)
    if n == 1 and not torch.jit.is_tracing():
        w0 = weight[0] if per_image else weight
        y = torch.mm(w0, flat[0]) if acc is None else torch.addmm(acc.reshape(out_channels, -1), w0, flat[0])
        return y.view(1, out_channels, h, w)
    batched = weight if per_image else weight.expand(n, -1, -1)
    y = torch.bmm(batched, flat) if acc is None else torch.baddbmm(acc.expand(n, -1, h * w), batched, flat)
    return y.view(n, out_channels, h, w)


class ToChannelsLast(nn.Module):
    """``(N, C, H, W) -> (N, H, W, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, H, W, C)``: a permuted view, nothing copied."""
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """``(N, H, W, C) -> (N, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C) -> (N, C, H, W)``: a permuted view, nothing copied."""
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on channels-last input ``(N, H, W, C)``.

    ``G = ||x||_2 over (H, W)``; ``Nx = G / (mean_C(G) + eps)``; ``out = (gamma * Nx + 1) * x + beta``.
    After re-parameterization ``beta`` lives in the next Linear and ``use_bias`` is False.
    """

    def __init__(self, channels: int, use_bias: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.use_bias = use_bias
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        if use_bias:
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C) -> (N, H, W, C)``, the authors' form; the block itself uses :meth:`channel_scale`."""
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        out = (self.gamma * nx + 1) * x
        return out + self.beta if self.use_bias else out

    def channel_scale(self, x: torch.Tensor) -> torch.Tensor:
        """``gamma * Nx + 1`` of a map ``(N, C, H, W)`` (any layout), shaped ``(N, C, 1, 1)``:
        the GRN without ``beta`` is ``x * channel_scale(x)``."""
        gx = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma.view(1, -1, 1, 1) * nx + 1


class SEBlock(nn.Module):
    """Squeeze-and-excitation: pool, 1x1 conv ``C -> C/4``, ReLU, 1x1 conv back, sigmoid gate.

    ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels // 4
        self.down = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.up = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``: ``x`` times a gate in ``(0, 1)`` per image and channel."""
        # The 1x1 convs act on a (N, C) vector: as Linears they skip the convolution machinery.
        gate = x.mean(dim=(2, 3))
        gate = F.relu(F.linear(gate, self.down.weight.flatten(1), self.down.bias))
        gate = torch.sigmoid(F.linear(gate, self.up.weight.flatten(1), self.up.bias))
        return x * gate[:, :, None, None]


class DilatedReparamBlock(nn.Module, Reparameterizable):
    """Large depthwise conv + BN, plus parallel dilated depthwise convs + BN, summed.

    Fuses into a single large depthwise conv with bias (``lk_origin``). ``(N, C, H, W) -> same``.
    """

    def __init__(self, channels: int, kernel_size: int = 13) -> None:
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"DilatedReparamBlock supports kernel sizes {sorted(DILATED_BRANCHES)}, got {kernel_size}")
        self.kernel_size = kernel_size
        self.kernel_sizes, self.dilations = DILATED_BRANCHES[kernel_size]
        self.lk_origin = DepthwiseConv2d(channels, kernel_size)
        self.origin_bn = nn.BatchNorm2d(channels)
        for k, r in zip(self.kernel_sizes, self.dilations):
            conv = DepthwiseConv2d(channels, k, dilation=r)
            self.add_module(f"dil_conv_k{k}_{r}", conv)
            self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels))
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``: the sum of the branches, or ``lk_origin`` alone once fused."""
        if self.fused:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in zip(self.kernel_sizes, self.dilations):
            conv = getattr(self, f"dil_conv_k{k}_{r}")
            bn = getattr(self, f"dil_bn_k{k}_{r}")
            out = out + bn(conv(x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each branch's BatchNorm into its conv and every branch into ``lk_origin`` (idempotent)."""
        if self.fused:
            return
        weight, bias = fuse_conv_bn(self.lk_origin.weight, None, self.origin_bn)
        for k, r in zip(self.kernel_sizes, self.dilations):
            branch_w, branch_b = fuse_conv_bn(
                getattr(self, f"dil_conv_k{k}_{r}").weight, None, getattr(self, f"dil_bn_k{k}_{r}")
            )
            weight = merge_centered(weight, dilated_to_dense(branch_w, r))
            bias = bias + branch_b
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        self.lk_origin = replace_with_conv(self.lk_origin, weight, bias)
        del self.origin_bn
        self.fused = True


class UniRepLKNetBlock(nn.Module, Reparameterizable):
    """UniRepLKNet block: LarK block for kernel >= 7, SmaK block for kernel 3 or 5.

    ``out = x + gamma * pwconv2(act(pwconv1(se(norm(dwconv(x))))))``; ``(N, C, H, W) -> same``.

    Args:
        dim: channels.
        kernel_size: depthwise kernel; >= 7 uses a :class:`DilatedReparamBlock`.
        layer_scale_init: initial per-channel ``gamma`` (1e-6 in the paper).
        ffn_ratio: hidden width of the pointwise FFN relative to ``dim``.
    """

    def __init__(self, dim: int, kernel_size: int, layer_scale_init: float = 1e-6, ffn_ratio: int = 4) -> None:
        super().__init__()
        if kernel_size >= 7:
            self.dwconv: nn.Module = DilatedReparamBlock(dim, kernel_size)
        elif kernel_size in (3, 5):
            self.dwconv = DepthwiseConv2d(dim, kernel_size)
        else:
            raise ValueError(f"UniRepLKNetBlock kernel_size must be 3, 5 or >= 7, got {kernel_size}")
        self.norm: nn.Module = nn.BatchNorm2d(dim)
        self.se = SEBlock(dim, dim // 4)
        hidden = ffn_ratio * dim
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, hidden))
        self.act = nn.Sequential(nn.GELU(), GRN(hidden, use_bias=True))
        self.pwconv2 = nn.Sequential(nn.Linear(hidden, dim, bias=False), ToChannelsFirst(), nn.BatchNorm2d(dim))
        self.gamma: nn.Parameter | None = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``: depthwise conv, norm, SE, then :meth:`pointwise_ffn` and the residual."""
        y = self.se(self.norm(self.dwconv(x)))
        return self.pointwise_ffn(y, x)

    def pointwise_ffn(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x + gamma * pwconv2(act(pwconv1(y)))``, on ``(N, C, H, W)`` maps in their own layout.

        Same maths as the authors' permute -> Linear -> GELU -> GRN -> Linear -> permute (the
        modules hold the weights, under their names), without the layout changes: the map stays
        channels-first, so the next depthwise conv gets the layout oneDNN runs fastest.
        """
        linear1: nn.Linear = self.pwconv1[1]
        grn: GRN = self.act[1]
        linear2: nn.Linear = self.pwconv2[0]
        h = self.act[0](pointwise_linear(y, linear1.weight, linear1.bias))
        scale = grn.channel_scale(h)
        bias = linear2.bias
        if grn.use_bias:  # W (h s + beta) = W (h s) + W beta
            projected = linear2.weight @ grn.beta.reshape(-1)
            bias = projected if bias is None else bias + projected
        spatial = h.shape[-2] * h.shape[-1]
        if spatial > linear2.out_features and not is_channels_last(h):
            # Scale the smaller tensor: W (h s) == (W s) h, one weight per image.
            weight = linear2.weight * scale.view(h.shape[0], 1, h.shape[1])  # explicit: B may be 0 (an empty DDP slice)
        else:
            weight, h = linear2.weight, h * scale
        if self.fused:  # norm, layer scale folded into linear2: add the residual inside the GEMM
            return pointwise_linear(h, weight, bias, residual=x)
        out = self.pwconv2[2](pointwise_linear(h, weight, bias))
        return torch.addcmul(x, self.gamma.view(1, -1, 1, 1), out) if self.gamma is not None else x + out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse for inference, in place (idempotent); ``norm`` becomes ``nn.Identity``, ``gamma`` None.

        ``norm`` goes into the depthwise conv; GRN ``beta``, the last BatchNorm and ``gamma`` into the second Linear.
        """
        if self.fused:
            return
        # 1. depthwise conv (branches already merged) + BatchNorm -> one conv with bias
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
            conv = self.dwconv.lk_origin
            weight, bias = fuse_conv_bn(conv.weight, conv.bias, self.norm)
            self.dwconv.lk_origin = replace_with_conv(conv, weight, bias)
        else:
            weight, bias = fuse_conv_bn(self.dwconv.weight, self.dwconv.bias, self.norm)
            self.dwconv = replace_with_conv(self.dwconv, weight, bias)
        self.norm = nn.Identity()
        # 2. GRN beta, the trailing BatchNorm and the layer scale -> the second Linear
        grn: GRN = self.act[1]
        linear: nn.Linear = self.pwconv2[0]
        bn: nn.BatchNorm2d = self.pwconv2[2]
        linear_bias = linear.weight @ grn.beta.reshape(-1)
        if linear.bias is not None:
            linear_bias = linear_bias + linear.bias
        std = (bn.running_var + bn.eps).sqrt()
        scale = bn.weight / std
        layer_scale = self.gamma if self.gamma is not None else torch.ones_like(scale)
        fused = nn.Linear(linear.in_features, linear.out_features, bias=True).to(linear.weight)
        fused.weight.copy_(linear.weight * (scale * layer_scale).unsqueeze(1))
        fused.bias.copy_((bn.bias + (linear_bias - bn.running_mean) * scale) * layer_scale)
        trainable = linear.weight.requires_grad
        fused.requires_grad_(trainable)
        self.pwconv2 = nn.Sequential(fused, ToChannelsFirst())
        del grn.beta
        grn.use_bias = False
        self.gamma = None
        self.fused = True
