"""``minimaxad watch``: files written slowly, a restart in the middle, a corrupt file; the input
folder is never modified."""

from __future__ import annotations

import csv
import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

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
