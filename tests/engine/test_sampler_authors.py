"""``--sampler authors``: a one-process fit draws its batches as the authors' DataLoader does."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import SINGLE_PROCESS, authors_epoch_order
from minimaxad.engine.trainer import TrainingError, TrainingRun, build_model


def their_orders(count: int, batch_size: int, epochs: int, workers: int = 0) -> list[list[list[int]]]:
    """Their scripts' ``DataLoader(data, batch_size, shuffle=True)``, iterated once per epoch."""
    loader = DataLoader(range(count), batch_size=batch_size, shuffle=True, num_workers=workers)
    return [[batch.tolist() for batch in loader] for _ in range(epochs)]


@pytest.mark.parametrize("workers", [0, 2])
def test_order_is_the_dataloader_shuffle_on_the_global_generator(workers):
    torch.manual_seed(5)
    torch.randn(777)  # what building a network draws
    state = torch.get_rng_state()
    expected = their_orders(29, 8, epochs=3, workers=workers)
    for epoch, batches in enumerate(expected):
        assert [i for b in batches for i in b] == authors_epoch_order(state, epoch, 29)
    # a pure function of the state and the epoch: later epochs replay, whatever drew meanwhile
    torch.randn(5)
    assert authors_epoch_order(state, 2, 29) == [i for b in expected[2] for i in b]


def test_order_refuses_a_negative_epoch():
    with pytest.raises(ValueError, match="epoch >= 0"):
        authors_epoch_order(torch.get_rng_state(), -1, 4)


def micro_config(tmp_path, **overrides) -> RunConfig:
    values = dict(
        backbone="unireplknet_micro",
        encoder_weights="none",
        image_size=32,
        batch_size=4,
        epochs=3,
        seed=11,
        device="cpu",
        workers=0,
        evaluate=False,
        checkpoint_every=0,
        val_fraction=0.0,
        sampler="authors",
    )
    values.update(overrides)
    return RunConfig(**values)


def items(count: int) -> list[dict]:
    return [{"image": torch.full((3, 32, 32), float(i)), "path": f"{i:03d}.png"} for i in range(count)]


def run_batches(run: TrainingRun, data: list[dict], epoch: int) -> list[list[int]]:
    return [list(batch.indices) for batch in run.batches(data, epoch)]


def test_training_run_draws_the_authors_batches(tmp_path):
    config = micro_config(tmp_path)
    # their script: seed, build the network, then the DataLoader's shuffle on the global generator
    torch.manual_seed(config.seed)
    build_model(config)
    expected = their_orders(10, 4, epochs=3)
    run = TrainingRun(config, tmp_path, ["c"], SINGLE_PROCESS)
    run.set_up(resume=False)
    torch.randn(3)  # anything else drawing from the global generator changes nothing
    assert [run_batches(run, items(10), e) for e in range(3)] == expected
    assert [len(b) for b in expected[0]] == [4, 4, 2]  # the short last batch kept, as their single scripts


def test_seeded_sampler_is_unchanged_and_other_names_refused(tmp_path):
    run = TrainingRun(micro_config(tmp_path, sampler="seeded"), tmp_path, ["c"], SINGLE_PROCESS)
    run.set_up(resume=False)
    from minimaxad.engine.distributed import EpochBatchSampler

    assert run_batches(run, items(10), 1) == EpochBatchSampler(10, 4, seed=11, epoch=1).global_batches()
    with pytest.raises(ValueError, match="choose one of seeded, authors"):
        TrainingRun(micro_config(tmp_path, sampler="shuffle"), tmp_path, ["c"], SINGLE_PROCESS).set_up(resume=False)


def test_authors_sampler_cannot_order_tiles(tmp_path):
    class Tiles(list):
        def epoch_order(self, generator):
            return list(range(len(self)))

    run = TrainingRun(micro_config(tmp_path), tmp_path, ["c"], SINGLE_PROCESS)
    run.set_up(resume=False)
    with pytest.raises(TrainingError, match="--sampler seeded"):
        run_batches(run, Tiles(items(6)), 0)


def test_fit_option_reaches_the_config():
    from minimaxad.cli import build_parser, config_from_args

    args = build_parser().parse_args(["fit", "--data", "d", "--output", "o", "--sampler", "authors"])
    assert config_from_args(args).sampler == "authors"
    args = build_parser().parse_args(["fit", "--data", "d", "--output", "o"])
    assert config_from_args(args).sampler == "seeded"


def test_our_network_leaves_the_global_generator_where_theirs_does(authors_models):
    """Their scripts shuffle with the generator their constructors leave behind: ours must draw as much."""
    import contextlib
    import io

    torch.manual_seed(111)
    with contextlib.redirect_stdout(io.StringIO()):  # their constructors print their settings
        authors_models.unireplknet.unireplknet_f()
        authors_models.de_unireplknet.de_unireplknet_f()
    theirs = torch.get_rng_state()
    torch.manual_seed(111)
    build_model(RunConfig(backbone="unireplknet_f", encoder_weights="none"))
    assert torch.equal(torch.get_rng_state(), theirs)
