"""Losses reproduce the authors' values, gradients and ADC branch (reference/losses.pt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minimaxad.losses import (
    TORCH_QUANTILE_LIMIT, adc_loss, adc_threshold, compute_loss, global_cosine_loss, local_hm_loss,
    local_loss, quantile,
)
from minimaxad.anomaly_map import training_anomaly_map

BOUND = 1e-4


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def cases(reference_dir):
    return torch.load(reference_dir / "losses.pt", weights_only=True)


def with_grad(features):
    return [f.clone().requires_grad_(True) for f in features]


@pytest.mark.parametrize("index", range(4))
def test_adc_loss_value_gradient_and_branch(cases, index):
    case = cases[index]
    decoder = with_grad(case["decoder_features"])
    loss, details = adc_loss(case["encoder_features"], decoder, image_size=case["image_size"],
                             p_hard=case["p_hard"], p_lim=case["p_lim"], return_details=True)
    assert rel_err(loss.detach(), case["adc_loss"]) < BOUND
    assert details["branch"] == case["adc_branch"] == ("lim" if index < 2 else "hard")
    assert details["pixels_above_hard"] == case["adc_pixels_above_hard"]
    assert details["min_pixels"] == pytest.approx(case["adc_min_pixels"], rel=1e-12)
    for ours, ref in zip(torch.autograd.grad(loss, decoder), case["adc_grads"]):
        assert rel_err(ours, ref) < BOUND


@pytest.mark.parametrize("index", range(4))
def test_global_loss_value_and_gradient(cases, index):
    case = cases[index]
    decoder = with_grad(case["decoder_features"])
    loss = global_cosine_loss(case["encoder_features"], decoder)
    assert rel_err(loss.detach(), case["global_loss"]) < BOUND
    for ours, ref in zip(torch.autograd.grad(loss, decoder), case["global_grads"]):
        assert rel_err(ours, ref) < BOUND


def test_training_map_matches(cases):
    for case in cases:
        ours = training_anomaly_map(case["encoder_features"], case["decoder_features"], case["image_size"])
        assert rel_err(ours, case["train_anomaly_map"]) < BOUND


def test_adc_gradient_only_through_selected_pixels(cases):
    case = cases[2]
    s = training_anomaly_map(case["encoder_features"], case["decoder_features"], 64).requires_grad_(True)
    threshold, branch, _, _ = adc_threshold(s, 0.9999, 0.9995)
    squared = s * s
    loss = squared[squared >= threshold].mean()
    (grad,) = torch.autograd.grad(loss, s)
    selected = (squared >= threshold)
    assert branch == "hard" and 0 < selected.sum() < s.numel()
    assert torch.all(grad[~selected] == 0) and torch.all(grad[selected] != 0)


def test_local_losses(cases):
    case = cases[3]
    s = training_anomaly_map(case["encoder_features"], case["decoder_features"], 64)
    assert local_loss(case["encoder_features"], case["decoder_features"], 64).item() == pytest.approx(
        s.pow(2).mean().item(), rel=1e-6)
    sq = s.pow(2).flatten()
    expected = sq[sq >= torch.quantile(sq, 0.9995)].mean()
    assert local_hm_loss(case["encoder_features"], case["decoder_features"], 64).item() == pytest.approx(
        expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        compute_loss("l2", case["encoder_features"], case["decoder_features"], 64)


@pytest.mark.parametrize("q", [0.9995, 0.9999, 0.5, 0.0, 1.0, 0.123])
def test_quantile_equals_torch_below_limit(q):
    x = torch.rand(100_003, generator=torch.Generator().manual_seed(1)) ** 3
    assert quantile(x, q).item() == torch.quantile(x, q).item()


@pytest.mark.slow
def test_quantile_past_torch_limit():
    """Past 2**24 elements (e.g. batch 20 at 1024 px) torch.quantile refuses; ours does not."""
    n = 20 * 1024 * 1024
    assert n > TORCH_QUANTILE_LIMIT
    x = torch.rand(n, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError):
        torch.quantile(x, 0.9995)
    values = np.sort(x.numpy())
    for q in (0.9995, 0.9999, 0.3):
        # torch's own arithmetic: rank = float32(q) * (n - 1), then lerp of the neighbours
        rank = np.float32(q) * np.float32(n - 1)
        lo, hi = int(np.floor(rank)), int(np.ceil(rank))
        w = np.float32(rank - lo)
        expected = torch.lerp(torch.tensor(values[lo]), torch.tensor(values[hi]), torch.tensor(w)).item()
        assert quantile(x, q).item() == expected
    # and the same value as torch.quantile wherever torch can compute it: take a prefix that fits
    head = x[:TORCH_QUANTILE_LIMIT]
    assert quantile(head, 0.9995).item() == torch.quantile(head, 0.9995).item()
