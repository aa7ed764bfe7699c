"""End to end through the command line: fit, test, resume (also after SIGKILL), bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minimaxad.cli import main
from minimaxad.engine.checkpoint import read_checkpoint

from .conftest import TINY

METRICS = {"i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro"}


def fit_args(root, out, *extra):
    return ["fit", "--data", str(root), "--format", "mvtec", "--output", str(out), *TINY, *extra]


def check_metrics_file(path: Path, categories):
    data = json.loads(path.read_text())
    assert set(data) >= {"categories", "mean"}
    assert sorted(data["categories"]) == sorted(categories)
    for values in list(data["categories"].values()) + [data["mean"]]:
        assert METRICS <= set(values)
        assert all(0.0 <= values[k] <= 1.0 for k in METRICS)
    for k in METRICS:
        mean = sum(data["categories"][c][k] for c in categories) / len(categories)
        assert data["mean"][k] == pytest.approx(mean, abs=1e-9)
    csv_lines = (path.parent / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_lines) == len(categories) + 2  # header + categories + mean
    return data


def test_fit_per_category_then_test(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(synthetic_root, out, "--categories", "weave", "washer", "--epochs", "2")) == 0
    printed = capsys.readouterr().out
    assert "random encoder" in printed.lower() or "RANDOM" in printed
    fitted = check_metrics_file(out / "metrics.json", ["weave", "washer"])
    for category in ("weave", "washer"):
        ckpt = read_checkpoint(out / category / "checkpoint.pt")
        assert ckpt["categories"] == [category] and ckpt["backbone"] == "unireplknet_micro"
        assert ckpt["image_size"] == 64 and ckpt["encoder_state"] is not None
        assert ckpt["training_state"] is None  # the final checkpoint holds no optimiser
        assert ckpt["thresholds"]["image"]["value"] is not None
        assert (out / category / "report.html").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "unireplknet_micro" and config["epochs"] == 2
    # test through the CLI reproduces the numbers fit printed
    tested = tmp_path / "test"
    assert (
        main(["test", "--checkpoint", str(out), "--data", str(synthetic_root), "--output", str(tested), "--quiet"]) == 0
    )
    again = check_metrics_file(tested / "metrics.json", ["weave", "washer"])
    for category in ("weave", "washer"):
        for k in METRICS:
            assert again["categories"][category][k] == pytest.approx(fitted["categories"][category][k], abs=1e-6)


def test_unified_fit_one_model(synthetic_root, tmp_path):
    out = tmp_path / "uni"
    assert main(fit_args(synthetic_root, out, "--unified", "--max-steps", "3", "--loss", "global")) == 0
    check_metrics_file(out / "metrics.json", ["washer", "weave"])
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert sorted(ckpt["categories"]) == ["washer", "weave"]
    assert ckpt["config"]["loss"] == "global"
    assert (out / "report.html").is_file() and (out / "train.log").read_text().count("epoch") >= 1


def test_no_eval_and_test_subset(synthetic_root, tmp_path):
    out = tmp_path / "noeval"
    assert main(fit_args(synthetic_root, out, "--unified", "--max-steps", "2", "--no-eval")) == 0
    assert not (out / "metrics.json").exists() and (out / "checkpoint.pt").is_file()
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--data",
                str(synthetic_root),
                "--categories",
                "weave",
                "--output",
                str(tmp_path / "t"),
                "--quiet",
            ]
        )
        == 0
    )
    check_metrics_file(tmp_path / "t" / "metrics.json", ["weave"])


def states_equal(a: Path, b: Path) -> float:
    sa, sb = read_checkpoint(a)["state"], read_checkpoint(b)["state"]
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def test_resume_matches_uninterrupted(synthetic_root, tmp_path):
    base = ["--unified", "--epochs", "4", "--val-fraction", "0", "--no-eval"]
    assert main(fit_args(synthetic_root, tmp_path / "straight", *base)) == 0
    # the same run stopped after 2 epochs (an earlier process) and resumed
    broken = tmp_path / "broken"
    assert main(fit_args(synthetic_root, broken, *base, "--max-steps", "12")) == 0  # 6 steps/epoch x 2
    state = read_checkpoint(broken / "last.pt")
    assert state["training_state"]["epoch"] == 2 and state["training_state"]["step"] == 12
    (broken / "checkpoint.pt").unlink()
    # --max-steps is not a resume-critical setting: drop it and resume to the full 4 epochs
    assert main(fit_args(synthetic_root, broken, *base, "--resume")) == 0
    assert states_equal(tmp_path / "straight" / "checkpoint.pt", broken / "checkpoint.pt") == 0.0


def test_resume_with_other_settings_is_refused(synthetic_root, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(fit_args(synthetic_root, out, "--unified", "--epochs", "1", "--no-eval")) == 0
    assert (
        main(fit_args(synthetic_root, out, "--unified", "--epochs", "1", "--no-eval", "--lr", "0.1", "--resume")) == 2
    )
    assert "lr: 0.005 -> 0.1" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(synthetic_root, tmp_path):
    """A real SIGKILL while training; --resume continues from the last epoch checkpoint and
    ends with the same weights as a run that was never interrupted."""
    args = ["--unified", "--epochs", "30", "--val-fraction", "0", "--no-eval", "--checkpoint-every", "1"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "minimaxad", *fit_args(synthetic_root, out, *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "last.pt").exists():
            try:
                if read_checkpoint(out / "last.pt")["training_state"]["epoch"] >= 3:
                    break
            except Exception:
                pass  # being replaced at this instant
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint.pt").exists()
    resumed_from = read_checkpoint(out / "last.pt")["training_state"]["epoch"]
    assert 3 <= resumed_from < 30
    # the kill may leave a temporary file of a write in progress, never a half-written checkpoint
    leftovers = list(out.glob(".*.tmp"))
    assert all(p.name.startswith((".last.pt.", ".checkpoint.pt.")) for p in leftovers), leftovers
    assert main(fit_args(synthetic_root, out, *args, "--resume")) == 0
    assert not list(out.glob(".*.tmp")), "the resumed run removes the killed run's temporary files"
    assert f"resumed from {out / 'last.pt'} at epoch {resumed_from}" in (out / "train.log").read_text()
    assert main(fit_args(synthetic_root, tmp_path / "straight", *args)) == 0
    assert states_equal(tmp_path / "straight" / "checkpoint.pt", out / "checkpoint.pt") < 1e-6


def test_corrupt_and_mismatched_checkpoints(synthetic_root, tmp_path, capsys):
    out = tmp_path / "ok"
    assert main(fit_args(synthetic_root, out, "--unified", "--max-steps", "1", "--no-eval")) == 0
    good = out / "checkpoint.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(truncated),
                "--data",
                str(synthetic_root),
                "--output",
                str(tmp_path / "t1"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "truncated.pt is unreadable or corrupt" in err
    garbage = tmp_path / "garbage.pt"
    torch.save({"hello": torch.zeros(1)}, garbage)
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(garbage),
                "--data",
                str(synthetic_root),
                "--output",
                str(tmp_path / "t2"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "is not a minimaxad checkpoint" in capsys.readouterr().err
    # a checkpoint whose backbone does not match its tensors
    state = torch.load(good, weights_only=True)
    state["backbone"] = "unireplknet_a"
    torch.save(state, tmp_path / "mismatch.pt")
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(tmp_path / "mismatch.pt"),
                "--data",
                str(synthetic_root),
                "--output",
                str(tmp_path / "t3"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "does not fit unireplknet_a" in capsys.readouterr().err


def test_checkpoint_loading_never_runs_code(tmp_path):
    """A pickle that would run code on load is refused (weights_only)."""

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": "minimaxad-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    from minimaxad.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_extra_data_merges_into_unified_training(synthetic_root, tmp_path):
    """--extra-data (the paper's AeBAD-S + MVTec AD run): extra categories are trained on too,
    resized to the crop size of the main dataset."""
    from minimaxad.engine.config import RunConfig
    from minimaxad.engine.runner import open_dataset

    config = RunConfig(
        data=str(synthetic_root),
        format="mvtec",
        categories=["weave"],
        unified=True,
        image_size=80,
        crop_size=64,
        extra_datasets=[{"format": "mvtec", "root": str(synthetic_root), "categories": ["washer"]}],
    )
    train = open_dataset(config, "train")
    assert sorted(train.categories) == ["washer", "weave"]
    assert len(train) == 24
    assert train[0]["image"].shape == train[len(train) - 1]["image"].shape == (3, 64, 64)


def test_default_encoder_weights_come_from_the_cache(synthetic_root, tmp_path, monkeypatch, capsys):
    """Without --encoder-weights: the ImageNet file from the local cache; when absent, a clear
    error before any training, naming the file, where to get it, and the option."""
    from minimaxad import MiniMaxAD
    from minimaxad.models.weights import encoder_to_official

    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as on a machine without the extra
    args = [
        "fit",
        "--data",
        str(synthetic_root),
        "--categories",
        "weave",
        "--backbone",
        "unireplknet_f",
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--no-eval",
        "--quiet",
    ]
    assert main([*args, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unireplknet_f_in1k_224_acc78.58.pth" in err and "--encoder-weights PATH" in err
    assert "huggingface.co/DingXiaoH/UniRepLKNet" in err
    assert not (tmp_path / "a" / "weave").exists()

    donor = MiniMaxAD("unireplknet_f")
    (tmp_path / "cache").mkdir(exist_ok=True)  # the failed download attempt may have made it
    torch.save(
        {"model": encoder_to_official(donor.encoder.state_dict(), donor.spec)},
        tmp_path / "cache" / "unireplknet_f_in1k_224_acc78.58.pth",
    )
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    ckpt = read_checkpoint(tmp_path / "b" / "weave" / "checkpoint.pt")
    assert ckpt["encoder_state"] is None  # the encoder comes from its file, not the checkpoint
    assert ckpt["encoder_weights"]["identity"].startswith("unireplknet_f_in1k_224_acc78.58.pth@sha256:")


def test_aebad_preset_reports_each_test_domain(tmp_path):
    """The AeBAD-S protocol: one model, resize + centre crop, augmentation, and results per
    test domain (same, background, illumination, view) with their mean."""
    from tests.data.test_formats import _make_aebad

    root = _make_aebad(tmp_path / "AeBAD")
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--preset",
                "aebad",
                "--data",
                str(root),
                "--output",
                str(out),
                "--backbone",
                "unireplknet_micro",
                "--encoder-weights",
                "none",
                "--image-size",
                "80",
                "--crop-size",
                "64",
                "--batch-size",
                "2",
                "--max-steps",
                "2",
                "--val-fraction",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads((out / "metrics.json").read_text())
    assert sorted(data["categories"]) == ["background", "illumination", "same", "view"]
    config = json.loads((out / "config.json").read_text())
    assert config["augment"] and config["loss"] == "global" and config["crop_size"] == 64
    assert read_checkpoint(out / "checkpoint.pt")["crop_size"] == 64
