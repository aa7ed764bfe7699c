"""200 awkward image files through the data validation, ``predict`` and ``fit --skip-bad-images``:
every broken file gets its own message naming it, every odd-but-valid file is processed, and
nothing in the input tree changes. A fuzz test (hypothesis) checks that decoding any bytes ends
in an image or in :class:`BadImageError`, never in another exception."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minimaxad.cli import main
from minimaxad.data.base import Record, validate_records
from minimaxad.data.io import BadImageError, load_image, probe_image

from .bad_corpus import BAD, GOOD, build_corpus
from .helpers import photo

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "train"
    return folder, build_corpus(folder, seed=0)


def tree_hashes(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_corpus(corpus):
    _, kinds = corpus
    assert len(kinds) == 200 and list(kinds.values()).count(BAD) == 144


def test_full_validation_names_every_broken_file_once(corpus):
    folder, kinds = corpus
    records = [Record(str(folder / name), 0, "corpus") for name in kinds]
    problems = validate_records(records, level="full", num_threads=2)
    flagged = {records[i].path.rsplit("/", 1)[1]: message for i, message in problems}
    assert set(flagged) == {n for n, k in kinds.items() if k == BAD}
    for name, message in flagged.items():
        assert message.startswith("unreadable image") and f"/{name}:" in message, message
    for name in ("huge_header_0.png", "huge_header.bmp"):
        assert "decompression bomb" in flagged[name]
    quick = {records[i].path.rsplit("/", 1)[1] for i, _ in validate_records(records, level="quick", num_threads=2)}
    # the quick check reads headers and ends: a corrupted middle is only found by decoding
    assert set(flagged) - quick == {f"corrupt_middle_{i}.png" for i in range(7)}


def test_predict_processes_every_good_file_and_names_every_bad_one(trained_checkpoint, corpus, tmp_path, capsys):
    folder, kinds = corpus
    before = tree_hashes(folder)
    out = tmp_path / "predictions"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_checkpoint),
                str(folder),
                "--output",
                str(out),
                "--quiet",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads((out / "scores.json").read_text())
    assert {r["path"].rsplit("/", 1)[1] for r in summary["predictions"]} == {n for n, k in kinds.items() if k == GOOD}
    failed = {f["path"].rsplit("/", 1)[1]: f["error"] for f in summary["failed"]}
    assert set(failed) == {n for n, k in kinds.items() if k == BAD}
    for name, error in failed.items():
        assert error.startswith("cannot decode image") and name in error, error
        assert f"{name}: cannot decode image" in printed
    assert "144 input(s) could not be read" in printed
    assert len(list((out / "heatmaps").iterdir())) == 56
    assert tree_hashes(folder) == before


@pytest.mark.slow
def test_fit_skip_bad_images_trains_on_every_good_file(corpus, tmp_path):
    folder, kinds = corpus
    root = tmp_path / "dataset"
    shutil.copytree(folder, root / "train")
    before = tree_hashes(root)
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--data",
                str(root),
                "--format",
                "folder",
                "--output",
                str(out),
                "--backbone",
                "unireplknet_micro",
                "--encoder-weights",
                "none",
                "--image-size",
                "32",
                "--batch-size",
                "16",
                "--max-steps",
                "5",
                "--val-fraction",
                "0",
                "--no-eval",
                "--skip-bad-images",
                "--quiet",
            ]
        )
        == 0
    )
    log = next(out.rglob("train.log")).read_text()
    quick_misses = 7  # corrupt middles pass the quick check; they are replaced when loaded, with a warning
    assert re.search(rf"on {56 + quick_misses} images", log), log[-2000:]
    skipped = re.findall(r"skipped unreadable image (\S+):", log)
    assert len(skipped) == 144 - quick_misses and len(set(skipped)) == len(skipped)
    assert tree_hashes(root) == before


# -- fuzz: whatever the bytes, an image or BadImageError ------------------------------------------
FORMATS = ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(FORMATS),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    mode=st.sampled_from(["RGB", "L", "P", "RGBA", "CMYK", "I;16", "LA", "1"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
)
def test_decoding_damaged_files_never_raises_anything_else(tmp_path, fmt, width, height, mode, cut, flips):
    image = Image.fromarray(photo((width, height), seed=width * 41 + height))
    try:
        image = image.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format
    data = bytearray(buffer.getvalue())
    for where, value in flips:
        data[int(where * (len(data) - 1))] ^= value
    path = tmp_path / f"fuzz.{fmt.lower()}"
    path.write_bytes(bytes(data[: max(0, int(len(data) * cut))] if cut < 1 else data))
    try:
        assert load_image(path).mode == "RGB"
    except BadImageError as exc:
        assert str(path) in str(exc)
    try:
        info = probe_image(path, full=True)
        assert info.size[0] >= 1 and info.size[1] >= 1
    except BadImageError as exc:
        assert str(path) in str(exc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=2048),
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"GIF89a", b"RIFF"]),
)
def test_random_bytes_behind_a_signature(tmp_path, data, prefix):
    path = tmp_path / "random.png"
    path.write_bytes(prefix + data)
    try:
        assert load_image(path).mode == "RGB"
    except BadImageError as exc:
        assert str(path) in str(exc)
