"""Every file ``predict`` writes lies inside ``--output`` under a safe name, whatever the inputs
are called: absolute, relative, ``..``, unicode, very long, Windows device names, collisions."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from minimaxad.cli import main
from minimaxad.files import (
    MAX_NAME_LENGTH,
    UnsafePathError,
    atomic_write,
    check_writable_folder,
    create_temporary_beside,
    inside,
    safe_name,
    unique_names,
)
from minimaxad.inference.predict import collect_inputs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("x", "x"),
        ("a/b\\c", "a_b_c"),
        ("..", "_"),
        (".hidden", "hidden"),
        ("...", "_"),
        ("", "_"),
        ("/", "_"),
        ("CON", "_CON"),
        ("nul.tar", "_nul.tar"),
        ("com7", "_com7"),
        ("CONSOLE", "CONSOLE"),
        ("a:b*c?d", "a_b_c_d"),
        ("tab\there", "tab_here"),
        ("ends. ", "ends"),
        ("Défaut-日本", "Défaut-日本"),
    ],
)
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_long_names_are_bounded_and_stay_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(a)) == MAX_NAME_LENGTH and safe_name(a) != safe_name(b)
    assert len(safe_name("é" * 500).encode()) < 255  # file systems count bytes


def test_unique_names_ignore_case_and_never_reuse_a_taken_name():
    assert unique_names(["a", "A", "a_1", "a"]) == ["a", "A_1", "a_1_1", "a_2"]


def test_inside_refuses_escapes(tmp_path):
    assert inside(tmp_path, "heatmaps", "x.png") == (tmp_path / "heatmaps" / "x.png").resolve()
    for parts in (("..", "x.png"), ("/etc/passwd",), ("a", "..", "..", "b")):
        with pytest.raises(UnsafePathError, match="outside the output folder"):
            inside(tmp_path, *parts)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        inside(tmp_path, "link", "x.png")


def test_output_folder_behind_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot write into the output folder"):
        check_writable_folder(tmp_path / "file" / "out")


def test_unwritable_output_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root without CAP restrictions)")
        with pytest.raises(OSError, match="cannot write into the output folder"):
            check_writable_folder(locked / "sub")
    finally:
        locked.chmod(0o700)


@contextlib.contextmanager
def umask(mask: int):
    """Run the block under the process umask ``mask``; the previous umask is restored after."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_new_files_the_mode_of_the_umask(tmp_path, mask, mode):
    with umask(mask):
        written = atomic_write(tmp_path / "scores.json", "{}\n")
        replaced = atomic_write(written, "[]\n")  # a rewrite gets the same mode
    assert stat.S_IMODE(written.stat().st_mode) == mode
    assert replaced.read_text() == "[]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]  # no temporary file left


def test_temporaries_are_never_an_existing_file_or_link(tmp_path, monkeypatch):
    import secrets

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".x.json.aaaa.tmp").symlink_to(victim)  # taken: a link is never followed
    fd, tmp = create_temporary_beside(tmp_path / "x.json")
    os.close(fd)
    assert tmp == tmp_path / ".x.json.bbbb.tmp" and tmp.stat().st_size == 0
    assert victim.read_text() == "keep me"


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (seed * 37 % 256, 90, 140)).save(path, format="PNG")
    return path


@pytest.fixture
def awkward_inputs(tmp_path):
    """The reported case (``/tmp/q/x.png`` next to ``/zz/tmp/q/x.png``: the old names kept the
    leading ``/``) and a folder of names that are hard to write anywhere."""
    shallow = Path(tempfile.mkdtemp(prefix="q", dir="/tmp"))  # /tmp/qXXXX/x.png: three components
    deep = tmp_path / "zz" / "tmp" / shallow.name / "x.png"
    folder = tmp_path / "photos"
    names = [
        "CON.png",
        "aux.jpg",
        "Défaut 日本.png",
        "y" * 240 + ".png",
        "a.png",
        "A.png",
        "b.png",
        "b.jpg",
        "...weird.png",
        "sp ace .png",
    ]
    for i, name in enumerate(names):
        _png(folder / name, i)
    _png(folder / "..." / "x.png", 20)  # a folder named '...'
    _png(folder / ".git" / "x.png", 21)  # a hidden folder is still walked (its files are visible)
    try:
        yield [_png(shallow / "x.png", 30), _png(deep, 31), folder]
    finally:
        shutil.rmtree(shallow, ignore_errors=True)


def test_collect_inputs_names_are_safe_and_unique(awkward_inputs, tmp_path, monkeypatch):
    shallow, deep, folder = awkward_inputs
    monkeypatch.chdir(tmp_path)
    relative = Path("zz") / ".." / "zz" / deep.relative_to(tmp_path / "zz")  # relative, through '..'
    files, names, missing = collect_inputs([shallow, relative, folder, tmp_path / "nothing.png"])
    assert missing == [(str(tmp_path / "nothing.png"), "no such file or folder")]
    assert len(files) == len(names) == 2 + 11  # '...weird.png' is a hidden file: not an input
    assert len({n.lower() for n in names}) == len(names)
    for name in names:
        assert name == safe_name(name) and "/" not in name and not name.startswith(".")
        assert len(name) <= MAX_NAME_LENGTH + 4  # a counter may follow
    # the reported case: '/tmp/qX/x.png' was named '/__tmp__qX__x' (an absolute path)
    assert names[:2] == [f"tmp__{shallow.parent.name}__x", f"zz__tmp__{shallow.parent.name}__x"]
    assert "_CON" in names and "_aux" in names and "Défaut 日本" in names


def _hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_predict_writes_only_inside_output(trained_checkpoint, awkward_inputs, tmp_path, monkeypatch):
    shallow, deep, folder = awkward_inputs
    monkeypatch.chdir(tmp_path)
    root_before = set(os.listdir("/"))
    inputs_before = {**_hashes(shallow.parent), **_hashes(tmp_path)}
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(trained_checkpoint),
            str(shallow),
            str(deep.relative_to(tmp_path)),
            str(folder),
            "--output",
            "out",
            "--quiet",
            "--report",
        ]
    )
    assert code == 0
    assert set(os.listdir("/")) == root_before, "predict wrote into the file-system root"
    written = {str(p) for p in out.rglob("*") if p.is_file()}
    after = {**_hashes(shallow.parent), **_hashes(tmp_path)}
    assert {k: v for k, v in after.items() if k not in written} == inputs_before  # inputs untouched, nothing else
    resolved_out = out.resolve()
    for path in written:
        assert resolved_out in Path(path).resolve().parents
    heatmaps = sorted((out / "heatmaps").iterdir())
    assert len(heatmaps) == 13 == len(list((out / "masks").iterdir()))


def test_predict_refuses_an_output_subfolder_that_links_elsewhere(trained_checkpoint, tmp_path, capsys):
    photo = _png(tmp_path / "in" / "x.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "heatmaps").symlink_to(elsewhere)
    assert main(["predict", "--checkpoint", str(trained_checkpoint), str(photo), "--output", str(out), "--quiet"]) == 2
    assert "outside the output folder" in capsys.readouterr().err
    assert not list(elsewhere.iterdir())


def test_predict_output_files_are_readable_by_others_under_umask_022(trained_checkpoint, tmp_path):
    """A line display or another service account reads the results: with umask 022 every file
    predict writes (heatmaps, masks, scores.csv, scores.json) is 0644, not mkstemp's 0600."""
    photo = _png(tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    with umask(0o022):
        code = main(["predict", "--checkpoint", str(trained_checkpoint), str(photo), "--output", str(out), "--quiet"])
    assert code == 0
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*") if p.is_file()}
    assert {"scores.csv", "scores.json", "heatmaps/x.png", "masks/x.png"} <= set(modes)
    assert set(modes.values()) == {"0o644"}, modes
