"""Faults around the files of a run: bad checkpoints (never code execution), a full disk while a
checkpoint or a report is written, an output folder that cannot be written."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from minimaxad.cli import main
from minimaxad.engine.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    atomic_torch_save,
    read_checkpoint,
    remove_stale_temporaries,
)
from minimaxad.files import atomic_write

from .conftest import TINY

pytestmark = pytest.mark.usefixtures("single_thread")

MARKER_ENV = "MINIMAXAD_TEST_CODE_RAN"


class RunsCode:
    """Unpickling this object would create a file: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bad_checkpoints(folder: Path, good: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its error must contain)."""
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, data: bytes, phrase: str) -> None:
        path = folder / name
        path.write_bytes(data)
        files[name] = (path, phrase)

    data = good.read_bytes()
    add("empty.pt", b"", "is empty (0 bytes)")
    add("truncated.pt", data[: len(data) // 2], "unreadable or corrupt")
    add("cut_at_1k.pt", data[:1024], "unreadable or corrupt")
    add("random.pt", os.urandom(4096), "unreadable or corrupt")
    add("text.pt", b"hello, I am not a checkpoint\n", "unreadable or corrupt")
    add("pickle_with_code.pt", pickle.dumps(RunsCode(marker)), "a bare Python pickle")
    add("old_pickle_with_code.pt", pickle.dumps(RunsCode(marker), protocol=2), "refused without running anything")
    buffer = io.BytesIO()
    torch.save({"payload": RunsCode(marker)}, buffer)  # a torch zip whose pickle holds code
    add("torch_with_code.pt", buffer.getvalue(), "refused without running anything")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "a zip, but not a checkpoint")
    add("foreign.zip", buffer.getvalue(), "a zip archive that is not a complete torch checkpoint")
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buffer)
    add("other_torch.pt", buffer.getvalue(), "is not a minimaxad checkpoint")
    add("flipped.pt", data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:], "unreadable or corrupt")
    return files


@pytest.fixture(scope="module")
def good_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    assert (
        main(
            [
                "fit",
                "--data",
                str(synthetic_root),
                "--output",
                str(out),
                *TINY,
                "--image-size",
                "32",
                "--unified",
                "--max-steps",
                "1",
                "--no-eval",
                "--val-fraction",
                "0",
            ]
        )
        == 0
    )
    return out / "checkpoint.pt"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_give_a_clear_error_and_never_run_code(good_checkpoint, synthetic_root, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    cases = bad_checkpoints(tmp_path, good_checkpoint, marker)
    assert len(cases) == 11
    photo = next((synthetic_root / "weave" / "test" / "good").glob("*.png"))
    for name, (path, phrase) in cases.items():
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(path)
        message = str(caught.value)
        assert str(path) in message and phrase in message, (name, message)
        for command in (
            ["test", "--checkpoint", str(path), "--data", str(synthetic_root)],
            ["predict", "--checkpoint", str(path), str(photo)],
        ):
            assert main([*command, "--output", str(tmp_path / f"out-{name}"), "--quiet"]) == 2, name
            assert str(path) in capsys.readouterr().err, name
    assert not marker.exists(), "a checkpoint's code ran"
    # the same code-carrying pickle does run when loaded unsafely: the test would see it
    torch.load(cases["torch_with_code.pt"][0], weights_only=False)
    assert marker.exists()


class FullDisk:
    """``os.fdopen`` whose files accept ``budget`` bytes, then fail as a full disk does."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.real = os.fdopen
        self.failures = 0

    def __call__(self, fd, mode="r", *args, **kwargs):
        handle = self.real(fd, mode, *args, **kwargs)
        if "w" not in mode:
            return handle
        disk = self

        class Limited:
            """The real file, but writes past the budget fail with ENOSPC."""

            def write(self, data):
                if len(data) > disk.budget:  # what fits is written, then the disk is full
                    handle.write(data[: disk.budget])
                    disk.budget = 0
                    disk.failures += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.budget -= len(data)
                return handle.write(data)

            def __getattr__(self, name):  # flush, fileno, close...
                return getattr(handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

        return Limited()


@pytest.mark.parametrize("budget", [0, 100, 5000, 50_000])
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(good_checkpoint, tmp_path, monkeypatch, budget):
    path = tmp_path / "last.pt"
    path.write_bytes(good_checkpoint.read_bytes())
    before = digest(path)
    state = read_checkpoint(path)
    disk = FullDisk(budget)
    monkeypatch.setattr(os, "fdopen", disk)
    with pytest.raises(CheckpointWriteError, match="the previous last.pt is intact") as caught:
        atomic_torch_save(state, path)
    assert caught.value.errno == errno.ENOSPC and disk.failures >= 1
    monkeypatch.undo()
    assert digest(path) == before and read_checkpoint(path)["format"] == "minimaxad-checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left
    with pytest.raises(CheckpointWriteError, match="no new.pt was written"):
        monkeypatch.setattr(os, "fdopen", FullDisk(10))
        atomic_torch_save(state, tmp_path / "new.pt")


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoint_mode_follows_the_umask(tmp_path, mask, mode):
    """A new checkpoint gets 0o666 less the umask (another account can read it under 022), not
    mkstemp's fixed 0600; the write stays atomic (no temporary file left beside it)."""
    previous = os.umask(mask)
    try:
        atomic_torch_save({"weights": torch.arange(3)}, tmp_path / "last.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == mode
    assert torch.load(tmp_path / "last.pt", weights_only=True)["weights"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_disk_full_while_writing_a_report_keeps_the_previous_one(tmp_path, monkeypatch):
    from minimaxad.reporting.html import write_report

    report = tmp_path / "report.html"
    report.write_text("<html>the previous report</html>")
    monkeypatch.setattr(os, "fdopen", FullDisk(1000))
    with pytest.raises(OSError, match="the previous report.html is intact") as caught:
        write_report(report, metrics={"categories": {}}, items=[], title="t")
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert report.read_text() == "<html>the previous report</html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    monkeypatch.setattr(os, "fdopen", FullDisk(5))
    with pytest.raises(OSError, match="no scores.json was written"):
        atomic_write(tmp_path / "scores.json", "{}" * 100)


@pytest.mark.slow
def test_disk_full_during_fit_then_resume(synthetic_root, tmp_path, monkeypatch, capsys):
    """The second resumable checkpoint (the end of training) hits a full disk: fit stops with an
    error naming the file and saying the previous one is intact; --resume then finishes with
    the weights of an uninterrupted run."""
    import minimaxad.engine.checkpoint as checkpoint_module

    args = ["--categories", "weave", "--epochs", "2", "--val-fraction", "0", "--no-eval", "--checkpoint-every", "1"]
    out = tmp_path / "full"
    real_save = checkpoint_module.atomic_torch_save
    saves = []

    real_fdopen = os.fdopen

    def second_save_fails(obj, path):
        saves.append(Path(path).name)
        if len(saves) != 2:
            return real_save(obj, path)
        os.fdopen = FullDisk(2000)
        try:
            return real_save(obj, path)
        finally:
            os.fdopen = real_fdopen

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", second_save_fails)
    fit = ["fit", "--data", str(synthetic_root), "--format", "mvtec", *TINY, "--image-size", "32", *args]
    assert main([*fit, "--output", str(out)]) == 2
    out = out / "weave"  # one model per category
    err = capsys.readouterr().err
    assert f"could not write the checkpoint {out / 'last.pt'}" in err and "the previous last.pt is intact" in err
    assert read_checkpoint(out / "last.pt")["training_state"]["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", real_save)
    assert main([*fit, "--output", str(out.parent), "--resume"]) == 0
    assert main([*fit, "--output", str(tmp_path / "straight")]) == 0
    a = read_checkpoint(out / "checkpoint.pt")["state"]
    b = read_checkpoint(tmp_path / "straight" / "weave" / "checkpoint.pt")["state"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_unwritable_output_fails_before_training(synthetic_root, tmp_path, monkeypatch, capsys):
    import minimaxad.engine.runner as runner

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(runner, "open_dataset", no_training)
    (tmp_path / "a-file").write_text("x")
    fit = ["fit", "--data", str(synthetic_root), *TINY, "--unified", "--max-steps", "1", "--no-eval"]
    assert main([*fit, "--output", str(tmp_path / "a-file" / "run")]) == 2
    assert "cannot write into the --output folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root can write into any folder)
            assert main([*fit, "--output", str(locked / "run")]) == 2
            assert "cannot write into the --output folder" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_stale_temporaries_are_removed_but_checkpoints_kept(tmp_path):
    (tmp_path / "cat").mkdir()
    for name in (".last.pt.abc123.tmp", "cat/.checkpoint.pt.x.tmp", "last.pt", ".hidden.tmp", "cat/checkpoint.pt"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pt.x.tmp", ".last.pt.abc123.tmp"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        ".hidden.tmp",
        "cat/checkpoint.pt",
        "last.pt",
    ]
