"""The engine's training step is the authors' protocol; non-finite losses are handled."""

from __future__ import annotations

import pytest
import torch

from minimaxad.data import build_dataset, collate
from minimaxad.engine import distributed as distributed_module
from minimaxad.engine.config import RunConfig
from minimaxad.engine.trainer import TrainingError, seed_everything, train
from minimaxad.losses import adc_loss, global_cosine_loss
from minimaxad.models import MiniMaxAD


def tiny_config(root, **overrides):
    values = dict(
        data=str(root),
        format="mvtec",
        categories=["weave"],
        unified=True,
        backbone="unireplknet_micro",
        encoder_weights="none",
        image_size=64,
        batch_size=4,
        val_fraction=0.0,
        evaluate=False,
        seed=7,
        checkpoint_every=0,
    )
    values.update(overrides)
    return RunConfig(**values)


@pytest.mark.parametrize("loss", ["adc", "global"])
def test_one_engine_step_equals_the_authors_step(synthetic_root, tmp_path, loss):
    config = tiny_config(synthetic_root, loss=loss, max_steps=1)
    dataset = build_dataset("mvtec", synthetic_root, split="train", categories=["weave"], image_size=64)
    result = train(config, dataset, None, tmp_path / "engine", categories=["weave"], progress=False)

    # by hand, as the authors' train.py: same seed, same model init, same first batch
    seed_everything(config.seed)
    model = MiniMaxAD("unireplknet_micro")
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    optimizer = torch.optim.AdamW(
        list(model.bottleneck.parameters()) + list(model.decoder.parameters()),
        lr=0.005,
        betas=(0.9, 0.999),
        weight_decay=1e-5,
    )
    # the engine's first batch: the first 4 of a permutation seeded by (seed, epoch 0) only
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed * 100_003 + 0))
    images = collate([dataset[int(i)] for i in order[:4]])["image"]
    model.train()  # the encoder stays in eval mode
    # the frozen encoder as the trainer runs it (fused, no autograd): the same function as
    # model.encoder up to float32 rounding, which AdamW's first step could amplify
    encoder_features = model.encode(images)
    decoder_features = model.decoder(model.bottleneck(encoder_features))
    if loss == "adc":
        value = adc_loss(encoder_features, decoder_features, image_size=64, p_hard=0.9999, p_lim=0.9995)
    else:
        value = global_cosine_loss(encoder_features, decoder_features)
    optimizer.zero_grad()
    value.backward()
    optimizer.step()

    assert result.final_loss == pytest.approx(value.item(), rel=1e-6)
    ours = result.model.trainable_state_dict()
    theirs = model.trainable_state_dict()
    moved = 0
    for key, expected in theirs.items():
        torch.testing.assert_close(ours[key].cpu(), expected, rtol=1e-6, atol=1e-7, msg=key)
        moved += int(not torch.equal(expected, before[key]))
    assert moved > 10  # the step really changed the parameters


def test_nonfinite_loss_skips_then_stops(synthetic_root, tmp_path, monkeypatch):
    real = distributed_module.compute_loss  # the one-process loss of engine.distributed.DataParallel
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(distributed_module, "compute_loss", sometimes_nan)
    dataset = build_dataset("mvtec", synthetic_root, split="train", categories=["weave"], image_size=64)
    with pytest.warns(RuntimeWarning, match="non-finite loss .* step skipped"):
        result = train(
            tiny_config(synthetic_root, max_steps=3),
            dataset,
            None,
            tmp_path / "a",
            categories=["weave"],
            progress=False,
        )
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_loss))

    monkeypatch.setattr(distributed_module, "compute_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingError, match="non-finite for 5 steps in a row"):
        train(
            tiny_config(synthetic_root, max_steps=20),
            dataset,
            None,
            tmp_path / "b",
            categories=["weave"],
            progress=False,
        )
