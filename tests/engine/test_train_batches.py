"""The authors' train-batch rules: unified scripts drop the short last batch (floor(N/B) steps an
epoch), single-class scripts keep it (ceil(N/B)) and hold it to the nominal batch's ADC limit."""

from __future__ import annotations

import pytest

from minimaxad import losses as losses_module
from minimaxad.data import build_dataset
from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import EpochBatchSampler
from minimaxad.engine.trainer import TrainingError, adc_limit_batch_size, train


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_cuts_the_same_global_batches_for_every_world_size(world_size, drop_last):
    n, b = 23, 5
    samplers = [
        EpochBatchSampler(n, b, seed=3, epoch=1, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    expected = EpochBatchSampler(n, b, seed=3, epoch=1, drop_last=drop_last).global_batches()
    assert [len(g) for g in expected] == ([5, 5, 5, 5] if drop_last else [5, 5, 5, 5, 3])
    per_rank = [list(s) for s in samplers]
    assert all(len(s) == len(expected) == len(batches) for s, batches in zip(samplers, per_rank))
    for index, global_batch in enumerate(expected):
        assert [i for batches in per_rank for i in batches[index]] == global_batch  # slices in rank order
    seen = {i for g in expected for i in g}
    assert len(seen) == (20 if drop_last else 23)
    # the dropped tail is a different 3 images in another epoch
    other = EpochBatchSampler(n, b, seed=3, epoch=2, drop_last=drop_last).global_batches()
    if drop_last:
        assert {i for g in other for i in g} != seen


def test_sampler_refuses_to_drop_every_batch():
    with pytest.raises(ValueError, match="lower --batch-size to at most 4"):
        EpochBatchSampler(4, 5, seed=0, epoch=0, drop_last=True)


def tiny_config(root, **overrides) -> RunConfig:
    values = dict(
        data=str(root),
        format="mvtec",
        categories=["weave"],
        backbone="unireplknet_micro",
        encoder_weights="none",
        image_size=32,
        batch_size=5,
        epochs=1,
        val_fraction=0.0,
        evaluate=False,
        seed=7,
        checkpoint_every=0,
    )
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture()
def limits_seen(monkeypatch):
    """Every ADC threshold the training loop computes: (images, pixel limit B, count A, branch)."""
    seen = []
    real = losses_module.adc_threshold

    def spy(score_map, p_hard=0.9999, p_lim=0.9995, limit_batch_size=None):
        result = real(score_map, p_hard, p_lim, limit_batch_size)
        seen.append((score_map.shape[0], result[3], result[2], result[1]))
        return result

    monkeypatch.setattr(losses_module, "adc_threshold", spy)
    return seen


@pytest.mark.parametrize("drop_last, steps", [(True, 2), (False, 3)])
def test_an_epoch_has_floor_or_ceil_of_n_over_b_steps(synthetic_root, tmp_path, limits_seen, drop_last, steps):
    """12 images, batch 5: a unified epoch drops the 2 left over (2 steps), a single-class one
    trains on them (3 steps) with the limit of 5 images, 5 * 32 * 32 * (1 - p_lim) = 2.56 pixels."""
    dataset = build_dataset("mvtec", synthetic_root, split="train", categories=["weave"], image_size=32)
    assert len(dataset) == 12
    config = tiny_config(synthetic_root, drop_last=drop_last, unified=drop_last)
    result = train(config, dataset, None, tmp_path / "run", categories=["weave"], progress=False)
    assert result.steps == steps and result.epochs_done == 1
    nominal = 5 * 32 * 32 * (1 - 0.9995)
    assert [images for images, *_ in limits_seen] == ([5, 5] if drop_last else [5, 5, 2])
    assert all(limit == nominal for _, limit, *_ in limits_seen)


def test_the_short_batch_takes_the_branch_of_the_nominal_limit(synthetic_root, tmp_path, limits_seen):
    """A constructed case where the two limits disagree on the short batch. At random init the
    coarse micro maps put ~1800 of the short batch's 2048 pixels above the hard threshold;
    p_lim = 0.5 sets the limits either side of that count: 2 * 1024 * 0.5 = 1024 pixels for the
    images present, 5 * 1024 * 0.5 = 2560 for the nominal batch. The loop takes the nominal rule's
    'lim' branch (the authors'); with adc_limit_batch='actual' it would take 'hard'."""
    dataset = build_dataset("mvtec", synthetic_root, split="train", categories=["weave"], image_size=32)
    branches = {}
    for adc_limit_batch, limit_images in (("nominal", 5), ("actual", 2)):
        limits_seen.clear()
        config = tiny_config(synthetic_root, p_lim=0.5, adc_limit_batch=adc_limit_batch)
        train(config, dataset, None, tmp_path / adc_limit_batch, categories=["weave"], progress=False)
        assert [entry[1] for entry in limits_seen[:2]] == [5 * 1024 * 0.5] * 2  # full batches: same limit
        images, limit, above, branch = limits_seen[-1]
        assert images == 2 and limit == limit_images * 32 * 32 * (1 - 0.5)
        assert 2 * 1024 * 0.5 <= above < 5 * 1024 * 0.5  # the case really sits between the limits
        branches[adc_limit_batch] = branch
    assert branches == {"nominal": "lim", "actual": "hard"}


def test_single_class_run_refuses_nothing_and_drop_last_refuses_a_tiny_set(synthetic_root, tmp_path):
    dataset = build_dataset("mvtec", synthetic_root, split="train", categories=["weave"], image_size=32)
    with pytest.raises(TrainingError, match="lower --batch-size to at most 12"):
        train(
            tiny_config(synthetic_root, drop_last=True, batch_size=16),
            dataset,
            None,
            tmp_path / "r",
            categories=["weave"],
            progress=False,
        )
    assert adc_limit_batch_size(tiny_config(synthetic_root)) == 5
    assert adc_limit_batch_size(tiny_config(synthetic_root, adc_limit_batch="actual")) is None
    with pytest.raises(ValueError, match="expected 'nominal'"):
        adc_limit_batch_size(tiny_config(synthetic_root, adc_limit_batch="nominl"))
