"""Convolutions whose CPU backward avoids oneDNN's slow weight gradients.

Depthwise "same" convolution (:class:`DepthwiseConv2d`): backward made of forward convolutions.

On oneDNN (PyTorch's CPU convolutions) the backward of a depthwise convolution is far slower
than its forward: measured with torch 2.13 on 2 cores, the weight gradient of a 13x13 depthwise
conv on an ``(8, 160, 32, 32)`` map takes 98 ms against 2 ms for the forward, and a dilated
conv's input gradient is 10-20x its forward. The decoder of MiniMaxAD is made of such convs,
so they dominated a training step. Both gradients of a stride-1 "same" depthwise conv are
themselves depthwise convolutions, which oneDNN runs fast:

* input gradient: the output gradient convolved with the flipped kernel, same padding and
  dilation;
* weight gradient: for every image and channel, the padded input correlated with that
  channel's output gradient used as the kernel (one group per image and channel), taken at
  stride ``dilation``, then summed over the batch.

Same numbers up to float32 rounding (about 1e-6 relative). Used only where it helps: a CPU
tensor, a kernel larger than 3x3 or dilated, gradients wanted, and an eager (not traced or
scripted) call; everything else, the frozen encoder, inference and export included, runs the
plain ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DepthwiseSameConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding, dilation, groups=C)`` for a stride-1 "same" depthwise
    conv (``2 * padding == dilation * (k - 1)``); ``x (N, C, H, W)``, ``weight (C, 1, k, k)``."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, dilation: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, d = ctx.padding, ctx.dilation
        n, c, h, w = x.shape
        # under autocast the output (hence its gradient) may be bf16 while x and weight are not
        g = grad_output.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            kernel = weight.to(g.dtype).flip(-1, -2)
            grad_x = F.conv2d(g, kernel, padding=p, dilation=d, groups=c).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # the conv's own zero padding pads x: output k x k, one map per image and channel
            per_image = F.conv2d(
                x.to(g.dtype).reshape(1, n * c, h, w), g.reshape(n * c, 1, h, w), padding=p, stride=d, groups=n * c
            )
            k = weight.shape[-1]
            grad_w = per_image.view(n, c, 1, k, k)
            grad_w = (grad_w[0] if n == 1 else grad_w.sum(0)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, k, padding=dilation * (k - 1) // 2, dilation, groups=channels)``
    with the fast CPU backward of this module's docstring. ``(N, C, H, W) -> (N, C, H, W)``.

    Parameters and state-dict keys are those of ``nn.Conv2d`` (``weight``, ``bias``), drawn by the
    same initialiser in the same order, so the authors' checkpoints and seeds carry over.
    """

    def __init__(
        self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = False, device=None, dtype=None
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"DepthwiseConv2d needs an odd kernel size for 'same' padding, got {kernel_size}")
        super().__init__(
            channels,
            channels,
            kernel_size,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=channels,
            bias=bias,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``; the module docstring's backward where it helps, else ``nn.Conv2d``'s."""
        if (
            x.device.type == "cpu"
            and x.shape[0] > 0  # an empty DDP slice: groups = N * C would be 0
            # plain 3x3: oneDNN's own backward is fast there (measured 0.7x the time of this one)
            and (self.kernel_size[0] > 3 or self.dilation[0] > 1)
            and torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
        ):
            return _DepthwiseSameConv.apply(x, self.weight, self.bias, self.padding[0], self.dilation[0])
        return super().forward(x)


# oneDNN's weight gradient of a dense conv is slow when the batch-times-output-positions it sums
# over is short and the channels many: 4.5 ms against 0.35 ms for the same sum as one GEMM on
# im2col columns ((1, 576, 8, 8) -> (1, 384, 4, 4), 3x3, stride 2). Measured crossover: the GEMM
# wins up to 256 summed positions when the output map has at most 64 positions.
GEMM_WEIGHT_GRAD_MAX_POSITIONS = 256
GEMM_WEIGHT_GRAD_MAX_MAP = 64


class _GemmWeightGradConv(torch.autograd.Function):
    """``F.conv2d(x, weight, None, stride, padding)`` (no bias, no groups, no dilation), whose
    weight gradient is ``grad_out (C_out, N*L) @ im2col(x)^T (N*L, C_in*k*k)``; the input
    gradient is PyTorch's own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        g = grad_output.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                g,
                x.to(g.dtype),
                weight.to(g.dtype),
                None,
                [s, s],
                [p, p],
                [1, 1],
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0].to(x.dtype)
        if ctx.needs_input_grad[1]:
            n, c_out = g.shape[:2]
            columns = F.unfold(x.to(g.dtype), weight.shape[-2:], padding=p, stride=s)  # (N, C_in*k*k, L)
            columns = columns.transpose(0, 1).reshape(columns.shape[1], -1)  # (C_in*k*k, N*L)
            flat = g.reshape(n, c_out, -1).transpose(0, 1).reshape(c_out, -1)  # (C_out, N*L)
            grad_w = (flat @ columns.t()).view(weight.shape).to(weight.dtype)
        return grad_x, grad_w, None, None


class StridedConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, k, stride, padding, bias=False)`` whose CPU weight gradient is one
    GEMM when oneDNN's is slow (short batches on small maps: the bottleneck's convs).
    ``(N, C_in, H, W) -> (N, C_out, H', W')``; keys and initialisation of ``nn.Conv2d``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 2,
        padding: int = 1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=False,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H', W')``; weight gradient as one GEMM where oneDNN's is slow."""
        if self.bias is None and self._gemm_weight_grad(x):
            return _GemmWeightGradConv.apply(x, self.weight, self.stride[0], self.padding[0])
        return super().forward(x)

    def _gemm_weight_grad(self, x: torch.Tensor) -> bool:
        if not (
            x.device.type == "cpu"
            and x.shape[0] > 0
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
        ):
            return False
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        out_h, out_w = ((x.shape[-2] + 2 * p - k) // s + 1), ((x.shape[-1] + 2 * p - k) // s + 1)
        positions = out_h * out_w
        return positions <= GEMM_WEIGHT_GRAD_MAX_MAP and x.shape[0] * positions <= GEMM_WEIGHT_GRAD_MAX_POSITIONS
