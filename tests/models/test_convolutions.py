"""Convolutions with a hand-made CPU backward: gradients equal autograd through F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minimaxad.models.convolutions import DepthwiseConv2d, StridedConv2d


def reference_grads(conv: DepthwiseConv2d, x: torch.Tensor, upstream: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    bias = None if conv.bias is None else conv.bias.detach().clone().requires_grad_(True)
    out = F.conv2d(x, weight, bias, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    out.backward(upstream)
    return out, x.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize(
    "shape, kernel, dilation, bias",
    [
        ((2, 6, 8, 8), 13, 1, False),  # kernel larger than the map
        ((1, 4, 9, 7), 3, 4, False),  # batch of one, non-square, dilation
        ((3, 5, 16, 12), 5, 2, True),
        ((2, 3, 11, 10), 7, 3, True),
    ],
)
def test_gradients_equal_autograd_through_conv2d(shape, kernel, dilation, bias):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(shape[1], kernel, dilation=dilation, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, dtype=torch.float64)
    out = conv(x)
    assert out.grad_fn is not None and "DepthwiseSameConv" in type(out.grad_fn).__name__
    out.backward(upstream)
    ref_out, ref_x, ref_w, ref_b = reference_grads(conv, x, upstream)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.weight.grad, ref_w, rtol=1e-10, atol=1e-10)
    if bias:
        torch.testing.assert_close(conv.bias.grad, ref_b, rtol=1e-10, atol=1e-10)


def test_float32_gradients_within_rounding_and_gradcheck():
    torch.manual_seed(1)
    conv = DepthwiseConv2d(8, 13)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    upstream = torch.randn(4, 8, 16, 16)
    conv(x).backward(upstream)
    _, ref_x, ref_w, _ = reference_grads(conv, x, upstream)
    torch.testing.assert_close(x.grad, ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref_w, rtol=1e-5, atol=1e-4)

    small = DepthwiseConv2d(2, 3, dilation=2, bias=True).double()
    inp = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (inp,))


def test_frozen_weight_and_input_without_grad():
    conv = DepthwiseConv2d(4, 5)
    conv.weight.requires_grad_(False)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is None

    conv.weight.requires_grad_(True)
    y = torch.randn(2, 4, 8, 8)
    conv(y).sum().backward()
    assert conv.weight.grad is not None


def test_plain_conv_without_grad_and_while_tracing():
    conv = DepthwiseConv2d(4, 7, dilation=2)
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        out = conv(x)
    assert out.grad_fn is None
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, None, padding=6, dilation=2, groups=4))
    traced = torch.jit.trace(conv, x)  # tracing must record aten::conv2d, not the Python Function
    assert "_DepthwiseSameConv" not in str(traced.graph)
    torch.testing.assert_close(traced(x), conv(x).detach())


def test_bf16_autocast_backward_keeps_parameter_dtypes():
    conv = DepthwiseConv2d(4, 13)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    _, ref_x, ref_w, _ = reference_grads(conv, x, torch.ones(2, 4, 8, 8))
    torch.testing.assert_close(conv.weight.grad, ref_w, rtol=3e-2, atol=3e-2 * ref_w.abs().max().item())


def test_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd kernel size"):
        DepthwiseConv2d(4, 4)


@pytest.mark.parametrize(
    "shape, out_channels, uses_gemm",
    [
        ((1, 12, 8, 8), 10, True),  # batch of one, 4x4 output: the GEMM weight gradient
        ((3, 6, 7, 9), 5, True),  # odd, non-square map
        ((2, 4, 32, 32), 6, False),  # a 16x16 output: oneDNN's own
    ],
)
def test_strided_conv_gradients_equal_autograd(shape, out_channels, uses_gemm):
    torch.manual_seed(2)
    conv = StridedConv2d(shape[1], out_channels, 3).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    assert ("GemmWeightGradConv" in type(out.grad_fn).__name__) == uses_gemm
    upstream = torch.randn_like(out)
    out.backward(upstream)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = conv.weight.detach().clone().requires_grad_(True)
    ref = F.conv2d(x_ref, w_ref, stride=2, padding=1)
    ref.backward(upstream)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-10)


def test_strided_conv_plain_without_grad_and_under_bf16_autocast():
    conv = StridedConv2d(8, 4, 3)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        assert conv(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x.requires_grad_(True))
    assert out.dtype == torch.bfloat16 and "GemmWeightGradConv" in type(out.grad_fn).__name__
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = conv.weight.detach().clone().requires_grad_(True)
    F.conv2d(x_ref, w_ref, stride=2, padding=1).sum().backward()
    torch.testing.assert_close(conv.weight.grad, w_ref.grad, rtol=3e-2, atol=3e-2 * w_ref.grad.abs().max().item())


def test_plain_3x3_keeps_pytorchs_own_backward():
    conv = DepthwiseConv2d(4, 3)
    out = conv(torch.randn(1, 4, 8, 8, requires_grad=True))
    assert "DepthwiseSameConv" not in type(out.grad_fn).__name__
    dilated = DepthwiseConv2d(4, 3, dilation=2)(torch.randn(1, 4, 8, 8, requires_grad=True))
    assert "DepthwiseSameConv" in type(dilated.grad_fn).__name__


def test_empty_batch_trains_through_both_convolutions():
    # a DDP rank's empty slice of a short last batch still runs forward and backward
    depthwise, strided = DepthwiseConv2d(4, 13), StridedConv2d(4, 6, 3)
    x = torch.zeros(0, 4, 8, 8, requires_grad=True)
    (depthwise(x).sum() + strided(x).sum()).backward()
    assert torch.count_nonzero(depthwise.weight.grad) == 0 and torch.count_nonzero(strided.weight.grad) == 0
