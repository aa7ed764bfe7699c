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


def test_seed_table_gives_mean_std_and_the_paired_difference():
    from compare_training_with_authors import format_seed_table, mean_std, seed_table

    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1414, abs=1e-4)
    metrics = lambda p: {"i_auroc": 0.5, "p_auroc": p, "aupro_200": 0.1}  # noqa: E731
    table = seed_table({"authors": {1: metrics(0.6), 2: metrics(0.7)}, "ours": {1: metrics(0.5), 2: metrics(0.8)}})
    ours = next(row for row in table if row["run"] == "ours")
    assert ours["p_auroc"][0] == pytest.approx(0.65)
    assert ours["p_auroc_minus_authors"][0] == pytest.approx(0.0)
    assert ours["p_auroc_minus_authors"][1] == pytest.approx(0.1414, abs=1e-4)
    assert "| ours | 2 | 0.500 ± 0.000 | 0.650 ± 0.212 |" in format_seed_table(table)


@pytest.mark.slow
def test_sampler_authors_trains_on_their_batches(authors, tmp_path):
    """--seeds: their loop and our fit with --sampler authors see the same batches, epoch by epoch,
    and one step apart end with the same test metrics."""
    from compare_training_with_authors import SeedSetup, spread_over_seeds

    from minimaxad.data import generate_synthetic_dataset

    generate_synthetic_dataset(
        tmp_path, categories=("weave",), n_train=10, n_test_good=4, n_test_defect=1, image_size=64, seed=0
    )
    setup = SeedSetup(
        seeds=(3,),
        image_size=64,
        batch_size=8,
        epochs=2,
        data=tmp_path / "weave",
        runs=("authors", "ours-authors-order"),
    )
    result = spread_over_seeds(authors, setup, log=lambda *_: None)
    assert result["authors_order_batches_identical"] == {"3": True}
    theirs, ours = result["per_seed"]["authors"]["3"], result["per_seed"]["ours-authors-order"]["3"]
    assert ours["p_auroc"] == pytest.approx(theirs["p_auroc"], abs=0.01)


@pytest.mark.slow
def test_every_speed_change_can_be_switched_off(authors, magnetic_tile_dir):
    """The 'exact' variant (fused AdamW, fused encoder copy, custom conv backward and FFN algebra
    all switched back) steps as ours does; no extra BatchNorm forward, no skipped step, no SyncBatchNorm."""
    result = compare(
        authors,
        Setup(
            variant="f", image_size=64, batch_size=8, steps=2, images=8, data=magnetic_tile_dir, ours=("fast", "exact")
        ),
        log=lambda *_: None,
    )
    checks = result["summary"]["checks"]
    for name in ("ours", "ours:exact"):
        assert checks[name]["num_batches_tracked_equal"] and checks[name]["optimizer_steps_equal"]
        assert checks[name]["sync_batchnorm_modules"] == 0
    assert result["records"][0]["ours:exact_loss_diff"] < 1e-5 * result["records"][0]["loss_authors"]
