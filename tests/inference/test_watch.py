"""``minimaxad watch``: files written slowly, a restart in the middle, a corrupt file; the input
folder is never modified. Files and folders that vanish, a poison photo (one that breaks scoring)
and a photo that kills the process, a broken model or a full output disk, and what a poll costs
on a big share."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import minimaxad.inference.watch as watch_module
from minimaxad.cli import main
from minimaxad.inference.predict import Predictor
from minimaxad.inference.watch import FolderWatcher, read_json_lines


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256 (the folder's content, names included)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def predictor(trained_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(trained_checkpoint)


@pytest.fixture()
def sources(synthetic_root) -> dict[str, Path]:
    return {
        "a": synthetic_root / "weave" / "test" / "good" / "000.png",
        "b": synthetic_root / "washer" / "test" / "good" / "000.png",
        "c": synthetic_root / "washer" / "test" / "hole" / "000.png",
        "d": synthetic_root / "weave" / "test" / "good" / "001.png",
    }


def expected_scores(predictor: Predictor, paths: dict[str, Path]) -> dict[str, float]:
    result = predictor.predict([paths[k] for k in paths])
    return {k: float(s) for k, s in zip(paths, result.scores)}


def test_slow_writes_corrupt_file_and_restart(predictor, sources, tmp_path):
    inbox, out = tmp_path / "camera", tmp_path / "out"
    (inbox / "line2").mkdir(parents=True)
    shutil.copy(sources["a"], inbox / "a.png")
    shutil.copy(sources["b"], inbox / "line2" / "b.png")
    (inbox / "notes.txt").write_text("not an image: ignored")
    slow = sources["c"].read_bytes()
    (inbox / "slow.png").write_bytes(slow[: len(slow) // 3])  # the camera is still writing this one
    good = sources["d"].read_bytes()
    (inbox / "broken.png").write_bytes(good[: len(good) // 2])  # truncated for good
    clock = FakeClock()
    messages: list[str] = []
    watcher = FolderWatcher(
        inbox, out, predictor, settle_seconds=1.0, give_up_seconds=5.0, clock=clock, echo=messages.append
    )
    assert watcher.poll() == 0  # first sight: nothing has settled yet
    clock.now = 0.5
    assert watcher.poll() == 0
    clock.now = 1.2
    assert watcher.poll() == 2  # a and line2/b; slow.png and broken.png do not decode yet
    assert watcher.pending == 2
    (inbox / "slow.png").open("ab").write(slow[len(slow) // 3 : 2 * len(slow) // 3])  # more arrives
    clock.now = 2.0
    assert watcher.poll() == 0  # slow.png changed: it settles again from now

    # a restart in the middle: a new watcher on the same output folder
    clock2 = FakeClock()
    watcher = FolderWatcher(
        inbox, out, predictor, settle_seconds=1.0, give_up_seconds=5.0, clock=clock2, echo=messages.append
    )
    assert any("resuming; 2 file(s) already done" in m for m in messages)
    assert watcher.poll() == 0
    with open(inbox / "slow.png", "ab") as handle:
        handle.write(slow[2 * len(slow) // 3 :])  # now complete
    shutil.copy(sources["d"], inbox / "d.png")
    written = folder_hashes(inbox)  # what the camera wrote; the watcher must leave it as it is
    clock2.now = 0.5
    assert watcher.poll() == 0
    clock2.now = 1.6
    assert watcher.poll() == 2  # slow.png (complete now) and d.png
    clock2.now = 5.5
    assert watcher.poll() == 1  # broken.png: settled for 5 s and still truncated -> reported
    assert watcher.pending == 0
    clock2.now = 20
    assert watcher.poll() == 0  # nothing is scored twice

    records = read_json_lines(out / "results.jsonl")
    files = [r["file"] for r in records]
    assert sorted(files) == ["a.png", "broken.png", "d.png", "line2/b.png", "slow.png"]  # each exactly once
    by_file = {r["file"]: r for r in records}
    truth = expected_scores(
        predictor, {"a.png": sources["a"], "line2/b.png": sources["b"], "slow.png": sources["c"], "d.png": sources["d"]}
    )
    for name, score in truth.items():
        assert by_file[name]["score"] == pytest.approx(score, rel=1e-6, abs=1e-6)
        assert by_file[name]["decision"] in ("normal", "anomalous") and by_file[name]["error"] is None
        heat = Image.open(out / by_file[name]["heatmap"])
        assert heat.size == (64, 64) and (out / by_file[name]["mask"]).is_file()
    assert by_file["line2/b.png"]["heatmap"] == "heatmaps/line2__b.png"
    assert by_file["broken.png"]["decision"] == "unreadable" and "truncated" in by_file["broken.png"]["error"]
    assert by_file["broken.png"]["score"] is None
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == files
    assert float(rows[files.index("slow.png")]["score"]) == pytest.approx(truth["slow.png"], rel=1e-6)
    journal = read_json_lines(out / "journal.jsonl")
    assert sorted(j["file"] for j in journal) == sorted(files)
    assert {j["file"]: j["status"] for j in journal}["broken.png"] == "failed"
    assert folder_hashes(inbox) == written


def test_recovers_from_a_crash_between_result_and_journal(predictor, sources, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for key in ("a", "b", "c"):
        shutil.copy(sources[key], inbox / f"{key}.png")
    before = folder_hashes(inbox)
    clock = FakeClock()
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=lambda m: None)
    watcher.poll()
    clock.now = 2
    assert watcher.poll() == 3
    # a crash after c.png's result line but before its journal line and CSV row, mid-write of the CSV
    journal = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    (out / "journal.jsonl").write_text("".join(journal[:2]))
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:3]) + lines[3][:10])  # torn row
    with open(out / "results.jsonl", "a") as handle:
        handle.write('{"file": "torn')  # and a torn JSON line after it
    shutil.copy(sources["d"], inbox / "d.png")
    clock2 = FakeClock()
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock2, echo=lambda m: None)
    watcher.poll()
    clock2.now = 2
    assert watcher.poll() == 1  # only d.png: c.png was done before the crash
    records = read_json_lines(out / "results.jsonl")
    assert [r["file"] for r in records] == ["a.png", "b.png", "c.png", "d.png"]
    with open(out / "results.csv", newline="") as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == ["a.png", "b.png", "c.png", "d.png"]
    assert sorted(j["file"] for j in read_json_lines(out / "journal.jsonl")) == ["a.png", "b.png", "c.png", "d.png"]
    before["d.png"] = hashlib.sha256(sources["d"].read_bytes()).hexdigest()
    assert folder_hashes(inbox) == before


def test_rewritten_file_is_a_new_photo(predictor, sources, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(sources["a"], inbox / "shot.png")
    shutil.copy(sources["b"], inbox / "shot.jpg.png")
    clock = FakeClock()
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=lambda m: None)
    watcher.poll()
    clock.now = 2
    assert watcher.poll() == 2
    shutil.copy(sources["c"], inbox / "shot.png")  # the camera reuses the name
    clock.now = 3
    watcher.poll()
    clock.now = 5
    assert watcher.poll() == 1
    records = read_json_lines(out / "results.jsonl")
    assert [r["file"] for r in records].count("shot.png") == 2
    heatmaps = [r["heatmap"] for r in records]
    assert len(set(heatmaps)) == 3  # the earlier heatmap is kept under its own name
    truth = expected_scores(predictor, {"c": sources["c"]})
    assert records[-1]["score"] == pytest.approx(truth["c"], rel=1e-6, abs=1e-6)


def test_refuses_an_output_folder_inside_the_input(predictor, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="inside the watched folder"):
        FolderWatcher(tmp_path / "in", tmp_path / "in" / "results", predictor)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderWatcher(tmp_path / "missing", tmp_path / "out", predictor)
    with pytest.raises(ValueError, match="unknown category"):
        FolderWatcher(tmp_path / "in", tmp_path / "out", predictor, category="bolts")


@pytest.mark.slow
def test_cli_watch_once_with_a_file_written_in_chunks(trained_checkpoint, predictor, sources, tmp_path, capsys):
    """The real command and real time: a writer thread appends a photo in chunks while it runs."""
    inbox, out = tmp_path / "share", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(sources["a"], inbox / "a.png")
    data = sources["c"].read_bytes()
    chunks = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    (inbox / "chunked.png").write_bytes(chunks[0])

    def writer() -> None:
        for chunk in chunks[1:]:
            time.sleep(0.15)
            with open(inbox / "chunked.png", "ab") as handle:
                handle.write(chunk)

    thread = threading.Thread(target=writer)
    thread.start()
    code = main(
        [
            "watch",
            str(inbox),
            "--checkpoint",
            str(trained_checkpoint),
            "--output",
            str(out),
            "--once",
            "--settle-seconds",
            "0.5",
            "--give-up-seconds",
            "3",
            "--interval",
            "0.05",
        ]
    )
    thread.join()
    assert code == 0
    before = folder_hashes(inbox)
    records = {r["file"]: r for r in read_json_lines(out / "results.jsonl")}
    assert sorted(records) == ["a.png", "chunked.png"]
    truth = expected_scores(predictor, {"a.png": sources["a"], "chunked.png": sources["c"]})
    for name, score in truth.items():
        assert records[name]["score"] == pytest.approx(score, rel=1e-6, abs=1e-6)
    assert records["chunked.png"]["size"] == len(data)
    assert "2 file(s) finished" in capsys.readouterr().out
    # a second run finds nothing new, and the input folder is as it was
    assert (
        main(
            [
                "watch",
                str(inbox),
                "--checkpoint",
                str(trained_checkpoint),
                "--output",
                str(out),
                "--once",
                "--settle-seconds",
                "0.2",
                "--interval",
                "0.05",
            ]
        )
        == 0
    )
    assert len(read_json_lines(out / "results.jsonl")) == 2
    assert folder_hashes(inbox) == before
    assert (
        main(["watch", str(inbox), "--checkpoint", str(trained_checkpoint), "--output", str(inbox / "x"), "--once"])
        == 2
    )
    assert not (inbox / "x").exists()


# -- files and folders that vanish ---------------------------------------------------------------
def about(messages: list[str], name: str) -> list[str]:
    return [m for m in messages if name in m]


@pytest.mark.parametrize("stage", ["stat", "settling", "decode", "restat"])
def test_a_file_that_vanishes_is_skipped_and_said_once(predictor, sources, tmp_path, monkeypatch, stage):
    """gone.png is deleted after the folder was listed and before its stat, while it settles, while it
    is decoded, or between its decoding and the check that it did not change meanwhile."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(sources["a"], inbox / "a.png")
    shutil.copy(sources["b"], inbox / "b.png")
    gone = inbox / "gone.png"
    shutil.copy(sources["c"], gone)

    def vanish() -> None:
        if os.path.lexists(gone):
            os.unlink(gone)

    real_stat, real_load = os.stat, predictor.decode
    if stage == "stat":

        def stat(path, *args, **kwargs):
            if not isinstance(path, int) and Path(path).name == "gone.png":
                vanish()
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
    elif stage == "decode":

        def load(path):  # also decodes the photos themselves (PIL images) before they are scored
            if isinstance(path, (str, os.PathLike)) and Path(path).name == "gone.png":
                vanish()
            return real_load(path)

        monkeypatch.setattr(predictor, "decode", load)
    elif stage == "restat":

        def load(path):
            photo = real_load(path)
            if isinstance(path, (str, os.PathLike)) and Path(path).name == "gone.png":
                vanish()
            return photo

        monkeypatch.setattr(predictor, "decode", load)
    clock = FakeClock()
    messages: list[str] = []
    watcher = FolderWatcher(
        inbox, out, predictor, settle_seconds=1.0, give_up_seconds=5.0, clock=clock, echo=messages.append
    )
    assert watcher.poll() == 0
    if stage == "settling":
        vanish()
    finished = 0
    for clock.now in (2, 3, 7, 20, 80):  # past give_up_seconds and a full scan: still said once
        finished += watcher.poll()
    assert finished == 2 and watcher.pending == 0
    assert [r["file"] for r in read_json_lines(out / "results.jsonl")] == ["a.png", "b.png"]
    assert [j["file"] for j in read_json_lines(out / "journal.jsonl")] == ["a.png", "b.png"]
    said = about(messages, "gone.png")
    assert len(said) == 1 and "vanished" in said[0], messages


def test_a_folder_that_vanishes_mid_walk(predictor, sources, tmp_path, monkeypatch):
    """line1/ is removed after IN_DIR was listed and before line1/ is; line3/ goes with a photo in it
    that was still settling; IN_DIR itself goes away for a while (an unmounted share)."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    for folder in ("line1", "line2", "line3"):
        (inbox / folder).mkdir(parents=True)
    shutil.copy(sources["a"], inbox / "a.png")
    shutil.copy(sources["b"], inbox / "line1" / "x.png")
    shutil.copy(sources["c"], inbox / "line2" / "y.png")
    shutil.copy(sources["d"], inbox / "line3" / "z.png")
    real_scandir = os.scandir
    removed = []

    class Listing:  # what os.scandir gave, read before line1/ was removed
        def __init__(self, entries):
            self.entries = iter(entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def close(self):
            pass

    def scandir(path="."):
        if not removed and not isinstance(path, int) and Path(path) == inbox.resolve():
            with real_scandir(path) as it:
                entries = list(it)
            removed.append(True)
            shutil.rmtree(inbox / "line1")
            return Listing(entries)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    clock = FakeClock()
    messages: list[str] = []
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=messages.append)
    assert watcher.poll() == 0 and removed
    shutil.rmtree(inbox / "line3")
    clock.now = 2
    assert watcher.poll() == 2
    for clock.now in (3, 4, 70):
        assert watcher.poll() == 0
    assert sorted(r["file"] for r in read_json_lines(out / "results.jsonl")) == ["a.png", "line2/y.png"]
    assert len(about(messages, "line1")) == 1 and "vanished" in about(messages, "line1")[0]
    assert len(about(messages, "line3/z.png")) == 1 and "vanished" in about(messages, "line3/z.png")[0]
    # IN_DIR itself goes (a share unmounted), then comes back with a new photo
    parked = tmp_path / "parked"
    inbox.rename(parked)
    for clock.now in (71, 72, 73):
        assert watcher.poll() == 0
    assert len([m for m in messages if "cannot be read" in m]) == 1
    parked.rename(inbox)
    shutil.copy(sources["b"], inbox / "b.png")
    clock.now = 74
    assert watcher.poll() == 0
    clock.now = 76
    assert watcher.poll() == 1
    assert any(m.endswith("is back") for m in messages)
    assert [r["file"] for r in read_json_lines(out / "results.jsonl")][-1] == "b.png"


# -- a poison photo, a photo that kills the process, a broken model, a full disk -----------------
POISON_SIZE = (50, 30)  # the fake backend breaks on a photo of this size


def poison_predictor(predictor: Predictor, monkeypatch, failure: BaseException) -> list[list]:
    """Make ``predictor.predict`` raise ``failure`` for any batch holding the poison photo; returns
    the sizes of every batch it is asked to score."""
    real_predict = predictor.predict
    calls: list[list] = []

    def predict(images, batch_size=16, category=None):
        sizes = [getattr(image, "size", None) for image in images]
        calls.append(sizes)
        if POISON_SIZE in sizes:
            raise failure
        return real_predict(images, batch_size=batch_size, category=category)

    monkeypatch.setattr(predictor, "predict", predict)
    return calls


def tried(calls: list[list]) -> int:
    return sum(POISON_SIZE in sizes for sizes in calls)


def test_a_poison_photo_fails_alone_then_is_quarantined(predictor, sources, tmp_path, monkeypatch):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for key in ("a", "b", "d"):
        shutil.copy(sources[key], inbox / f"{key}.png")
    Image.new("RGB", POISON_SIZE, (200, 30, 30)).save(inbox / "poison.png")
    truth = expected_scores(predictor, {f"{k}.png": sources[k] for k in ("a", "b", "d")})
    calls = poison_predictor(predictor, monkeypatch, ValueError("the backend broke on this photo"))
    clock = FakeClock()
    messages: list[str] = []
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=messages.append)
    watcher.poll()
    clock.now = 2
    assert watcher.poll() == 3  # the batch failed; one by one, only the poison photo fails
    assert watcher.pending == 1
    by_file = {r["file"]: r for r in read_json_lines(out / "results.jsonl")}
    assert sorted(by_file) == ["a.png", "b.png", "d.png"]
    for name, score in truth.items():
        assert by_file[name]["score"] == pytest.approx(score, rel=1e-6, abs=1e-6)
        assert by_file[name]["decision"] in ("normal", "anomalous") and by_file[name]["error"] is None
    assert any("try 1 of 3" in m for m in about(messages, "poison.png"))
    clock.now = 3
    assert watcher.poll() == 0  # second try
    clock.now = 4
    assert watcher.poll() == 1  # third: quarantined
    assert tried(calls) == 4  # in the batch once, then alone three times
    records = read_json_lines(out / "results.jsonl")
    assert [r["file"] for r in records] == ["a.png", "b.png", "d.png", "poison.png"]
    poison = records[-1]
    assert poison["decision"] == "error" and poison["score"] is None and poison["heatmap"] is None
    assert "the backend broke on this photo" in poison["error"] and "quarantined" in poison["error"]
    with open(out / "results.csv", newline="") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    assert rows["poison.png"]["decision"] == "error" and "quarantined" in rows["poison.png"]["error"]
    assert {j["file"]: j["status"] for j in read_json_lines(out / "journal.jsonl")}["poison.png"] == "quarantined"
    for clock.now in (10, 30, 100):
        assert watcher.poll() == 0
    assert tried(calls) == 4 and watcher.pending == 0
    # a restart does not try it again
    clock2 = FakeClock()
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock2, echo=messages.append)
    for clock2.now in (0, 2, 5):
        assert watcher.poll() == 0
    assert tried(calls) == 4 and len(read_json_lines(out / "results.jsonl")) == 4


class Killed(BaseException):
    """Stands for the process dying while it scores (SIGKILL, the OOM killer, a crash in the backend):
    nothing in the watcher catches it, nothing after it runs."""


def test_a_photo_that_kills_the_process_is_quarantined_after_max_tries_restarts(
    predictor, sources, tmp_path, monkeypatch
):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for key in ("a", "b"):
        shutil.copy(sources[key], inbox / f"{key}.png")
    Image.new("RGB", POISON_SIZE, (200, 30, 30)).save(inbox / "poison.png")
    calls = poison_predictor(predictor, monkeypatch, Killed())
    messages: list[str] = []

    def start() -> tuple[FolderWatcher, FakeClock]:
        clock = FakeClock()
        return FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=messages.append), clock

    watcher, clock = start()
    watcher.poll()
    clock.now = 2
    with pytest.raises(Killed):
        watcher.poll()  # killed while scoring the batch [a, b, poison]
    attempts = read_json_lines(out / "attempts.jsonl")
    assert sorted(a["file"] for a in attempts if a["status"] == "attempt") == ["a.png", "b.png", "poison.png"]
    assert read_json_lines(out / "results.jsonl") == []  # an attempt, no result: it counts as a try
    for _ in range(2):  # after a restart the photos of the killed batch go one at a time
        watcher, clock = start()
        watcher.poll()
        clock.now = 2
        with pytest.raises(Killed):
            watcher.poll()
    assert sorted(r["file"] for r in read_json_lines(out / "results.jsonl")) == ["a.png", "b.png"]
    assert tried(calls) == 3
    watcher, clock = start()  # its tries are used up: quarantined, not tried again
    for clock.now in (0, 2, 5):
        assert watcher.poll() == 0
    assert tried(calls) == 3
    records = {r["file"]: r for r in read_json_lines(out / "results.jsonl")}
    assert records["poison.png"]["decision"] == "error" and "quarantined" in records["poison.png"]["error"]
    assert records["a.png"]["decision"] in ("normal", "anomalous")  # the innocent ones of the batch are scored
    journal = {j["file"]: j["status"] for j in read_json_lines(out / "journal.jsonl")}
    assert journal == {"a.png": "scored", "b.png": "scored", "poison.png": "quarantined"}
    start()
    assert read_json_lines(out / "attempts.jsonl") == []  # compacted: nothing unfinished


def test_a_broken_model_stops_the_watcher_and_no_photo_pays_for_it(predictor, sources, tmp_path, monkeypatch):
    """Every scoring fails (the device is gone): the watcher stops with an error, and restarting it
    more than max_tries times while it is broken quarantines nothing."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for key in ("a", "b"):
        shutil.copy(sources[key], inbox / f"{key}.png")
    real_predict = predictor.predict
    broken = [True]

    def predict(images, batch_size=16, category=None):
        if broken[0]:
            raise RuntimeError("CUDA error: device lost")
        return real_predict(images, batch_size=batch_size, category=category)

    monkeypatch.setattr(predictor, "predict", predict)
    restart_while_failing(
        inbox, out, predictor, broken, RuntimeError, "the model or the device is failing, not the photos"
    )


def test_a_full_output_disk_stops_the_watcher_and_no_photo_pays_for_it(predictor, sources, tmp_path, monkeypatch):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for key in ("a", "b"):
        shutil.copy(sources[key], inbox / f"{key}.png")
    real_write = watch_module.atomic_write
    full = [True]

    def atomic_write(path, data):
        if full[0] and "heatmaps" in Path(path).parts:
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(watch_module, "atomic_write", atomic_write)
    restart_while_failing(inbox, out, predictor, full, OSError, "No space left")


def restart_while_failing(inbox, out, predictor, failing: list[bool], error: type, match: str) -> None:
    """Five starts of a watcher on the same OUT, the fault on for the first four: each faulty start
    stops with ``error``, and the fifth scores both photos (none was quarantined meanwhile)."""
    for attempt in range(5):
        failing[0] = attempt < 4
        clock = FakeClock()
        watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=lambda m: None)
        watcher.poll()
        clock.now = 2
        if failing[0]:
            with pytest.raises(error, match=match):
                watcher.poll()
        else:
            assert watcher.poll() == 2
    records = read_json_lines(out / "results.jsonl")
    assert [r["file"] for r in records] == ["a.png", "b.png"]
    assert all(r["decision"] in ("normal", "anomalous") for r in records)


# -- what a poll costs ---------------------------------------------------------------------------
def test_a_poll_costs_what_changed_not_what_is_done(predictor, sources, tmp_path, monkeypatch):
    """2,000 photos already done, in 40 nested folders: a poll stats the folders, lists none of them
    and stats no photo when nothing changed; a new photo costs one listing and its own stats; a
    done photo rewritten in place (no folder changes) is found by the periodic full scan."""
    inbox, out = tmp_path.resolve() / "share", tmp_path / "out"  # resolved: the paths the watcher stats
    folders = [inbox / f"line{i // 10}" / f"batch{i}" for i in range(40)]
    journal = []
    for folder in folders:
        folder.mkdir(parents=True)
        for j in range(50):
            path = folder / f"img{j:02d}.png"
            path.write_bytes(b"scored long ago")
            info = path.stat()
            rel = path.relative_to(inbox).as_posix()
            journal.append({"file": rel, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "status": "scored"})
    out.mkdir()
    (out / "journal.jsonl").write_text("".join(json.dumps(j) + "\n" for j in journal))
    all_folders = [inbox, *{f.parent for f in folders}, *folders]
    an_hour_ago = time.time() - 3600
    for folder in sorted(all_folders, key=lambda f: -len(f.parts)):  # an old share: no folder changed lately
        os.utime(folder, (an_hour_ago, an_hour_ago))
    clock = FakeClock()
    messages: list[str] = []
    watcher = FolderWatcher(inbox, out, predictor, settle_seconds=1.0, clock=clock, echo=messages.append)
    assert any("2000 file(s) already done" in m for m in messages)

    listed: list[Path] = []
    stated: list[Path] = []
    real_scandir, real_stat = os.scandir, os.stat

    def under_inbox(path) -> Path | None:
        if isinstance(path, int):
            return None
        path = Path(os.fsdecode(path))
        return path if path == inbox or inbox in path.parents else None

    def scandir(path="."):
        if under_inbox(path):
            listed.append(Path(path))
        return real_scandir(path)

    def stat(path, *args, **kwargs):
        if under_inbox(path):
            stated.append(Path(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)

    def poll() -> tuple[int, list[Path], list[Path]]:
        listed.clear()
        stated.clear()
        finished = watcher.poll()
        photos = [p for p in stated if p.suffix == ".png"]
        assert len(stated) - len(photos) <= len(all_folders)  # each folder's time stamp, once
        return finished, list(listed), photos

    finished, lists, photos = poll()  # the first poll is a full scan
    assert finished == 0 and len(lists) == len(all_folders) and len(photos) == 2000
    clock.now = 0.5
    assert poll() == (0, [], [])  # nothing changed: no listing, no photo stat'ed
    new = folders[12] / "new.png"
    shutil.copy(sources["a"], new)
    clock.now = 1.0
    finished, lists, photos = poll()
    assert finished == 0 and lists == [folders[12]] and set(photos) == {new}
    clock.now = 2.5
    finished, lists, photos = poll()
    assert finished == 1 and set(lists) <= {folders[12]} and set(photos) == {new}
    clock.now = 15  # new.png is no longer re-checked for a rewrite in place
    finished, lists, photos = poll()
    assert finished == 0 and photos == []
    old = folders[3] / "img07.png"
    with open(old, "wb") as handle:  # rewritten in place: its folder's time stamp does not change
        handle.write(sources["b"].read_bytes())
    clock.now = 16
    assert poll()[0::2] == (0, [])  # not seen yet...
    clock.now = 61
    finished, lists, photos = poll()  # ...but by the full scan
    assert finished == 0 and len(photos) == 2001 and watcher.pending == 1
    clock.now = 62
    finished, lists, photos = poll()
    assert finished == 1 and set(photos) == {old}
    records = read_json_lines(out / "results.jsonl")
    assert [r["file"] for r in records] == ["line1/batch12/new.png", "line0/batch3/img07.png"]
    truth = expected_scores(predictor, {"new": sources["a"], "old": sources["b"]})
    assert records[1]["score"] == pytest.approx(truth["old"], rel=1e-6, abs=1e-6)
    # what is kept per file: nothing for the done ones beyond their journal keys
    assert watcher.pending == 0 and len(watcher.done) == 2002
