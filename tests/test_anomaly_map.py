"""Evaluation maps and image scores reproduce the authors' (reference/evaluation.pt)."""

from __future__ import annotations

import pytest
import torch

from minimaxad.anomaly_map import anomaly_map, gaussian_kernel, image_score


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def evaluation(reference_dir):
    return torch.load(reference_dir / "evaluation.pt", weights_only=True)


def test_raw_and_smoothed_maps(evaluation):
    raw = anomaly_map(evaluation["encoder_features"], evaluation["decoder_features"], 64, smooth=False)
    smoothed = anomaly_map(evaluation["encoder_features"], evaluation["decoder_features"], 64)
    assert raw.shape == smoothed.shape == (24, 1, 64, 64)
    assert rel_err(raw, evaluation["anomaly_map_raw"]) < 1e-4
    assert rel_err(smoothed, evaluation["anomaly_map_smoothed"]) < 1e-4


def test_image_scores(evaluation):
    maps = evaluation["anomaly_map_smoothed"]
    assert rel_err(image_score(maps, 0.01), evaluation["results_top1pct_mean"]["image_scores"]) < 1e-4
    assert rel_err(image_score(maps, 0), evaluation["results_max_pixel"]["image_scores"]) < 1e-4


def test_top_ratio_uses_floor_of_pixel_count():
    maps = torch.zeros(1, 1, 10, 10)
    maps.view(-1)[:3] = torch.tensor([9.0, 6.0, 3.0])
    assert image_score(maps, 0.01).item() == 9.0  # k = floor(100 * 0.01) = 1
    assert image_score(maps, 0.02).item() == 7.5  # k = 2
    assert image_score(maps[:, 0], 0).item() == 9.0


def test_gaussian_kernel_is_normalised_and_zero_padded():
    k = gaussian_kernel(5, 4.0)
    assert k.shape == (1, 1, 5, 5) and abs(k.sum().item() - 1) < 1e-6
    # a constant map is darkened at the border by the zero padding, not at the centre
    from minimaxad.anomaly_map import smooth_map

    out = smooth_map(torch.ones(1, 1, 16, 16))
    assert out[0, 0, 8, 8].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0, 0, 0].item() < 0.5
