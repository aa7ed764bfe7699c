"""Our training step is the authors' (benchmarks/compare_training_with_authors.py, a short run).

Needs the authors' code ($MINIMAXAD_AUTHORS_CODE or ../shared/authors_code) and, for the real-photo
runs, ../shared/data/magnetic_tile; skipped with the reason otherwise.
"""

from __future__ import annotations

import pytest
import torch
from compare_training_with_authors import Setup, compare, import_authors

from minimaxad.losses import adc_loss


@pytest.fixture(scope="module")
def authors(authors_models):
    return import_authors(authors_models.path)


def features_of_map(score_map: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Encoder/decoder features whose level-0 cosine distance is ``score_map`` (levels 1-2: 0)."""
    angle = torch.arccos(1 - score_map.double()).unsqueeze(1)
    encoder = [torch.cat([torch.ones_like(angle), torch.zeros_like(angle)], 1).float()]
    decoder = [torch.cat([torch.cos(angle), torch.sin(angle)], 1).float()]
    for size in (32, 16):
        same = torch.rand(score_map.shape[0], 4, size, size, generator=torch.Generator().manual_seed(size))
        encoder.append(same)
        decoder.append(same.clone())
    return encoder, decoder


def test_their_loss_adc_on_a_short_batch_is_ours_with_the_nominal_limit(authors):
    """Their script's loss_adc, run as written, with num_lim of the nominal batch 8, on 2 images
    whose map takes the 'hard' branch under the actual batch's limit and 'lim' under theirs."""
    values = torch.linspace(0, 0.5, 8192)
    values[torch.arange(12) * 601 + 17] = torch.tensor([1.0] * 3 + [0.995] * 5 + [0.975**0.5] * 4)
    encoder, decoder = features_of_map(values.reshape(2, 64, 64))
    loss_adc = authors.losses["adc"]["loss_adc"]
    theirs = loss_adc(encoder, decoder, 0.9999, 0.9995, 64 * 64 * 8 * (1 - 0.9995), 64).item()
    ours_nominal = adc_loss(encoder, decoder, 64, limit_batch_size=8).item()
    ours_actual = adc_loss(encoder, decoder, 64).item()
    assert ours_nominal == pytest.approx(theirs, rel=1e-6)
    assert abs(ours_actual - theirs) > 1e-3  # the actual batch's limit is another rule


@pytest.mark.slow
def test_float64_training_steps_equal_the_authors_on_real_photos(authors, magnetic_tile_dir):
    """2 steps of variant F at 64 px on non-square grayscale JPEGs (the second a short batch): in
    float64 loss, gradients and weights agree to 1e-12, so nothing but float32 rounding differs."""
    result = compare(
        authors,
        Setup(variant="f", image_size=64, batch_size=8, steps=2, images=12, dtype="float64", data=magnetic_tile_dir),
        log=lambda *_: None,
    )
    summary = result["summary"]
    assert summary["initial_weights_identical"] and summary["initial_encoder_identical"]
    assert summary["input_max_abs_diff"] == 0.0  # our reader and their PIL pipeline give the same tensors
    assert summary["short_batches"] == 1
    assert summary["loss_diff_max"] < 1e-12
    assert summary["grad_rel_max"] < 1e-12
    assert summary["weight_rel_final"] < 1e-12
    assert 0 < result["records"][-1]["loss_authors"] < result["records"][0]["loss_authors"]


@pytest.mark.slow
def test_float32_step_from_the_same_state_differs_by_rounding_only(authors, magnetic_tile_dir):
    result = compare(
        authors,
        Setup(variant="f", image_size=64, batch_size=8, steps=1, images=8, mode="resync", data=magnetic_tile_dir),
        log=lambda *_: None,
    )
    for record in result["records"]:
        assert record["loss_diff"] < 1e-5 * record["loss_authors"]
        assert record["grad_rel"] < 1e-5
