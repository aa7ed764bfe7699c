"""Blocks and their structural re-parameterization on random statistics."""

from __future__ import annotations

import pytest
import torch

from minimaxad.models import GRN, Bottleneck, DilatedReparamBlock, SEBlock, UniRepLKNetBlock
from minimaxad.models.reparam import dilated_to_dense


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BatchNorm statistic a non-trivial value (as the reference did)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=g) * 0.3
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)
    return module.eval()


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_grn_formula():
    grn = GRN(4)
    with torch.no_grad():
        grn.gamma.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 1, 1, 4))
        grn.beta.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 1, 4))
    x = torch.randn(2, 3, 5, 4)
    g = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
    expected = (grn.gamma * n + 1) * x + grn.beta
    torch.testing.assert_close(grn(x), expected)


def test_grn_initialises_to_identity():
    x = torch.randn(1, 4, 4, 8)
    torch.testing.assert_close(GRN(8)(x), x)


def test_se_block_gates_channels():
    se = SEBlock(8)
    assert se.down.out_channels == 2 and se.up.in_channels == 2
    x = torch.randn(2, 8, 5, 5)
    gate = torch.sigmoid(se.up(torch.relu(se.down(x.mean(dim=(2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)


def test_dilated_to_dense_places_taps():
    k = torch.arange(9.0).view(1, 1, 3, 3)
    dense = dilated_to_dense(k, 3)
    assert dense.shape == (1, 1, 7, 7)
    torch.testing.assert_close(dense[0, 0, ::3, ::3], k[0, 0])
    assert dense.count_nonzero() == 8  # the zero tap stays zero


@pytest.mark.parametrize("kernel_size", [5, 7, 9, 11, 13, 15, 17])
def test_dilated_reparam_block_fuses_exactly(kernel_size):
    block = randomize(DilatedReparamBlock(6, kernel_size), seed=kernel_size)
    x = torch.randn(2, 6, 20, 20)
    before = block(x)
    block.reparameterize()
    assert block.fused and not hasattr(block, "origin_bn")
    assert block.lk_origin.bias is not None and block.lk_origin.kernel_size == (kernel_size, kernel_size)
    assert rel_err(block(x), before) < 1e-5


@pytest.mark.parametrize("kernel_size", [3, 5, 13])
def test_unireplknet_block_fuses_exactly_and_idempotently(kernel_size):
    block = randomize(UniRepLKNetBlock(8, kernel_size), seed=1)
    x = torch.randn(2, 8, 16, 16)
    before = block(x)
    block.reparameterize()
    once = block(x)
    block.reparameterize()
    assert rel_err(once, before) < 1e-5
    torch.testing.assert_close(block(x), once, rtol=0, atol=0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules())
    assert block.gamma is None and not block.act[1].use_bias


def test_block_residual_is_tiny_at_init():
    block = UniRepLKNetBlock(8, 13).eval()
    x = torch.randn(1, 8, 16, 16)
    assert (block(x) - x).abs().max() < 1e-3  # layer scale 1e-6


def test_bottleneck_shapes_and_fusion():
    dims = (8, 16, 32, 64)
    b = randomize(Bottleneck(dims), seed=3)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    out = b(feats)
    assert out.shape == (2, 64, 2, 2)
    b.reparameterize()
    assert rel_err(b(feats), out) < 1e-5
    assert b.conv1.bias is not None and isinstance(b.bn1, torch.nn.Identity)


@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_linear_equals_a_linear_over_channels_in_both_layouts(batch):
    from minimaxad.models.blocks import pointwise_linear

    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 6, 5, 4, generator=g)
    weight, bias = torch.randn(10, 6, generator=g), torch.randn(10, generator=g)
    residual = torch.randn(batch, 10, 5, 4, generator=g)
    expected = torch.nn.functional.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(pointwise_linear(x, weight, bias), expected)
    torch.testing.assert_close(pointwise_linear(x, weight, bias, residual=residual), expected + residual)
    last = pointwise_linear(x.contiguous(memory_format=torch.channels_last), weight, bias)
    assert last.is_contiguous(memory_format=torch.channels_last)  # no layout change on the way
    torch.testing.assert_close(last, expected)
    per_image = torch.randn(batch, 10, 6, generator=g)
    torch.testing.assert_close(pointwise_linear(x, per_image), torch.einsum("noc,nchw->nohw", per_image, x))


def test_fused_block_keeps_a_channels_first_map_channels_first():
    block = randomize(UniRepLKNetBlock(8, 13), seed=2)
    block.reparameterize()
    out = block(torch.randn(2, 8, 16, 16))
    assert out.is_contiguous()  # what the next depthwise conv runs fastest on


def test_block_gives_the_same_result_on_a_channels_last_map():
    block = randomize(UniRepLKNetBlock(8, 3), seed=4)
    x = torch.randn(2, 8, 16, 16)
    torch.testing.assert_close(block(x.contiguous(memory_format=torch.channels_last)), block(x), rtol=1e-5, atol=1e-6)
