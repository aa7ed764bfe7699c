"""Losses reproduce the authors' values, gradients and ADC branch (reference/losses.pt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minimaxad.anomaly_map import training_anomaly_map
from minimaxad.losses import (
    TORCH_QUANTILE_LIMIT,
    adc_loss,
    adc_threshold,
    compute_loss,
    global_cosine_loss,
    local_hm_loss,
    local_loss,
    quantile,
)

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
    loss, details = adc_loss(
        case["encoder_features"],
        decoder,
        image_size=case["image_size"],
        p_hard=case["p_hard"],
        p_lim=case["p_lim"],
        return_details=True,
    )
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
    selected = squared >= threshold
    assert branch == "hard" and 0 < selected.sum() < s.numel()
    assert torch.all(grad[~selected] == 0) and torch.all(grad[selected] != 0)


def test_local_losses(cases):
    case = cases[3]
    s = training_anomaly_map(case["encoder_features"], case["decoder_features"], 64)
    assert local_loss(case["encoder_features"], case["decoder_features"], 64).item() == pytest.approx(
        s.pow(2).mean().item(), rel=1e-6
    )
    sq = s.pow(2).flatten()
    expected = sq[sq >= torch.quantile(sq, 0.9995)].mean()
    assert local_hm_loss(case["encoder_features"], case["decoder_features"], 64).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
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


def short_batch_map() -> tuple[torch.Tensor, dict[float, int]]:
    """A map of 2 images of 64 x 64 (8192 pixels) whose top pixels split the two ADC branches:
    3 at 1.0, 5 at 0.995 and 4 at sqrt(0.975) above a smooth background in [0, 0.5].

    sigma^2 ~ 0.021, so the hard threshold 1 - sigma^2 keeps the 8 pixels with S^2 >= 0.979 and
    the lim threshold quantile(S^2, 0.9995) - sigma^2 = 0.990025 - sigma^2 ~ 0.969 keeps all 12."""
    values = torch.linspace(0, 0.5, 8192, dtype=torch.float32)
    hot = torch.tensor([1.0] * 3 + [0.995] * 5 + [0.975**0.5] * 4)
    values[torch.arange(12) * 601 + 17] = hot  # spread over both images
    return values.reshape(2, 64, 64), {1.0: 3, 0.995**2: 5, 0.975: 4}


def test_adc_limit_of_a_short_batch_uses_the_nominal_batch_size():
    """The authors' num_lim = size^2 * nominal batch * (1 - p_lim), also for the short last batch:
    here 16.384 pixels for batch 8, against 4.096 for the 2 images actually present."""
    score_map, _ = short_batch_map()
    t_actual, branch_actual, above, limit_actual = adc_threshold(score_map, 0.9999, 0.9995)
    t_nominal, branch_nominal, above_nominal, limit_nominal = adc_threshold(
        score_map, 0.9999, 0.9995, limit_batch_size=8
    )
    assert above == above_nominal == 8
    assert limit_actual == 2 * 64 * 64 * (1 - 0.9995) and limit_nominal == 64 * 64 * 8 * (1 - 0.9995)
    assert (branch_actual, branch_nominal) == ("hard", "lim")
    squared = score_map.double() ** 2
    assert int((squared >= t_actual).sum()) == 8 and int((squared >= t_nominal).sum()) == 12
    # the full batch: both rules agree
    full = torch.cat([score_map] * 4)
    assert adc_threshold(full, 0.9999, 0.9995, limit_batch_size=8)[3] == adc_threshold(full, 0.9999, 0.9995)[3]


def test_adc_loss_with_nominal_limit_averages_the_lim_selection():
    """Through adc_loss: features whose level-0 cosine distance is the map above (2 channels at
    angle arccos(1 - S)), levels 1 and 2 identical (distance 0)."""
    score_map, counts = short_batch_map()
    angle = torch.arccos(1 - score_map.double()).unsqueeze(1)
    encoder = [torch.cat([torch.ones_like(angle), torch.zeros_like(angle)], 1).float()]
    decoder = [torch.cat([torch.cos(angle), torch.sin(angle)], 1).float()]
    for size in (32, 16):
        same = torch.rand(2, 4, size, size, generator=torch.Generator().manual_seed(size))
        encoder.append(same)
        decoder.append(same.clone())
    expected = {
        None: ((3 * 1.0 + 5 * 0.995**2) / 8, "hard"),
        8: (sum(value * count for value, count in counts.items()) / 12, "lim"),
    }
    for limit, (value, branch) in expected.items():
        loss, details = adc_loss(encoder, decoder, 64, limit_batch_size=limit, return_details=True)
        assert details["branch"] == branch and loss.item() == pytest.approx(value, rel=1e-5)
        assert compute_loss("adc", encoder, decoder, 64, limit_batch_size=limit).item() == loss.item()
