"""--resume continues exactly the run that was started, or refuses and says what differs."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from minimaxad.cli import main
from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import current_context
from minimaxad.engine.resume import (
    FREE_WHEN_RESUMING,
    ResumeError,
    check_resume_compatible,
    data_fingerprint,
    resume_differences,
)
from minimaxad.engine.trainer import Batch, TrainingRun

from .conftest import TINY

pytestmark = pytest.mark.usefixtures("single_thread")


def fit_args(root, out, *extra):
    return [
        "fit",
        "--data",
        str(root),
        "--format",
        "mvtec",
        "--output",
        str(out),
        *TINY,
        "--image-size",
        "32",
        "--categories",
        "weave",
        "--val-fraction",
        "0",
        "--no-eval",
        *extra,
    ]


@pytest.fixture
def data_copy(synthetic_root, tmp_path):
    """A copy of the synthetic data that a test may change."""
    return shutil.copytree(synthetic_root, tmp_path / "data")


def test_every_training_setting_is_compared():
    compared = set(RunConfig().to_dict()) - FREE_WHEN_RESUMING
    assert {
        "val_fraction",
        "format",
        "categories",
        "augment",
        "extra_datasets",
        "p_hard",
        "p_lim",
        "betas",
        "lr",
        "loss",
        "seed",
        "batch_size",
        "epochs",
        "image_size",
        "crop_size",
        "lr_gamma",
        "weight_decay",
        "backbone",
        "unified",
        "precision",
        "skip_bad_images",
        "sync_batchnorm",
        "adc_sync",
    } <= compared
    assert "max_steps" not in compared and "data" not in compared  # the data's files are compared instead


def test_differences_are_all_listed():
    config = RunConfig(data="/d", val_fraction=0.1, p_hard=0.9999, betas=(0.9, 0.999), augment=False, extra_datasets=[])
    state = {
        "config": config.to_dict(),
        "training_state": {"data": None},
        "path": "run/last.pt",
        "encoder_weights": {"identity": "unireplknet_n@abc123"},
    }
    changed = config.updated(
        val_fraction=0.2,
        p_hard=0.99,
        betas=(0.5, 0.9),
        augment=True,
        lr=0.1,
        extra_datasets=[{"format": "mvtec", "root": "/m"}],
        max_steps=5,
        data="/moved",
    )
    found = resume_differences(state, changed, encoder_identity="unireplknet_n@def456")
    assert found == [
        "augment: False -> True",
        "extra_datasets: [] -> [{'format': 'mvtec', 'root': '/m'}]",
        "p_hard: 0.9999 -> 0.99",
        "lr: 0.005 -> 0.1",
        "betas: [0.9, 0.999] -> [0.5, 0.9]",
        "val_fraction: 0.1 -> 0.2",
        "encoder weights: unireplknet_n@abc123 -> unireplknet_n@def456",
    ]
    with pytest.raises(ResumeError, match="cannot --resume run/last.pt.*val_fraction: 0.1 -> 0.2"):
        check_resume_compatible(state, changed)
    check_resume_compatible(state, config.updated(max_steps=5, data="/moved", workers=2))  # free to change


def test_data_fingerprint_sees_added_removed_renamed_and_edited_files(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.png").write_bytes(name.encode() * 10)
    files = [tmp_path / f"{n}.png" for n in "abc"]
    base = data_fingerprint(files)
    assert base["files"] == ["a.png", "b.png", "c.png"] and base["count"] == 3
    state = {"config": {}, "training_state": {"data": base}, "path": "last.pt"}
    (tmp_path / "d.png").write_bytes(b"d")
    added = resume_differences(state, RunConfig(), data_fingerprint(files + [tmp_path / "d.png"]))
    assert len(added) == 1 and "3 -> 4 files, added 1 (e.g. d.png)" in added[0]
    removed = resume_differences(state, RunConfig(), data_fingerprint(files[:2]))
    assert "removed 1 (e.g. c.png)" in removed[0]
    (tmp_path / "b.png").write_bytes(b"edited")
    edited = resume_differences(state, RunConfig(), data_fingerprint(files))
    assert "the same names, but some file's content or the order changed" in edited[0]
    moved = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-moved")
    (moved / "b.png").write_bytes(b"b" * 10)
    assert data_fingerprint([moved / f"{n}.png" for n in "abc"])["sha256"] == base["sha256"]  # moved is fine


def test_resume_with_other_settings_or_data_is_refused(data_copy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(data_copy, out, "--epochs", "2", "--max-steps", "2")) == 0
    assert main(fit_args(data_copy, out, "--epochs", "2", "--resume", "--val-fraction", "0.5", "--p-lim", "0.9")) == 2
    err = capsys.readouterr().err
    assert "val_fraction: 0.0 -> 0.5" in err and "p_lim: 0.9995 -> 0.9" in err
    extra = data_copy / "weave" / "train" / "good" / "zzz_new.png"
    shutil.copy(data_copy / "weave" / "train" / "good" / "000.png", extra)
    assert main(fit_args(data_copy, out, "--epochs", "2", "--resume")) == 2
    assert "training data: 12 -> 13 files, added 1 (e.g. zzz_new.png)" in capsys.readouterr().err
    extra.unlink()
    assert main(fit_args(data_copy, out, "--epochs", "2", "--resume")) == 0  # the same data again: resumes


@pytest.mark.slow
def test_mid_epoch_resume_is_exact_and_keeps_the_schedule_in_phase(synthetic_root, tmp_path):
    """3 steps per epoch: stop after 4 (inside epoch 2), resume to the end; weights, optimiser
    and learning rate equal those of a run that went straight through."""
    assert main(fit_args(synthetic_root, tmp_path / "straight", "--epochs", "2")) == 0
    broken = tmp_path / "broken"
    assert main(fit_args(synthetic_root, broken, "--epochs", "2", "--max-steps", "4")) == 0
    stopped = read_checkpoint(broken / "weave" / "last.pt")["training_state"]
    assert (stopped["epoch"], stopped["batch_in_epoch"], stopped["step"]) == (1, 1, 4)
    assert stopped["scheduler"]["last_epoch"] == 1  # one finished epoch: not stepped at the mid-epoch stop
    assert main(fit_args(synthetic_root, broken, "--epochs", "2", "--resume")) == 0
    a = read_checkpoint(tmp_path / "straight" / "weave" / "last.pt")
    b = read_checkpoint(broken / "weave" / "last.pt")
    assert b["training_state"]["step"] == a["training_state"]["step"] == 6
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert a["training_state"]["scheduler"] == b["training_state"]["scheduler"]
    for sa, sb in zip(
        a["training_state"]["optimizer"]["state"].values(), b["training_state"]["optimizer"]["state"].values()
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_skipped_step_leaves_batchnorm_statistics_as_they_were(tmp_path):
    config = RunConfig(
        backbone="unireplknet_micro", encoder_weights="none", image_size=32, batch_size=2, device="cpu", epochs=1
    )
    run = TrainingRun(config, tmp_path, ["x"], current_context())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.set_up(resume=False)
    run.network.train()

    def statistics():
        return {
            k: v.clone()
            for k, v in run.model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        }

    weights = {k: v.clone() for k, v in run.model.trainable_state_dict().items()}
    before = statistics()
    poisoned = Batch(torch.full((2, 3, 32, 32), float("nan")), 2, [0, 1], ["a", "b"])
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        run.step(poisoned)
    after = statistics()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(weights[k], v) for k, v in run.model.trainable_state_dict().items())
    run.step(Batch(torch.randn(2, 3, 32, 32), 2, [0, 1], ["a", "b"]))  # a finite step does move them
    moved = statistics()
    assert any(not torch.equal(before[k], moved[k]) for k in before if k.endswith("running_mean"))
