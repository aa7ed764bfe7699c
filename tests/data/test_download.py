"""minimaxad download: archives built here, served on 127.0.0.1, unpacked safely, converted."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from minimaxad.data import build_dataset
from minimaxad.data import download as dl
from minimaxad.data.download import UnsafeArchiveError, safe_extract

from ..http_server import ServedFiles, start_file_server


def png(value: int, size: int = 32, mask: bool = False) -> bytes:
    array = np.zeros((size, size), np.uint8) if mask else np.full((size, size, 3), value, np.uint8)
    if mask:
        array[4:12, 4:12] = value
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w:xz", extra=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def mvtec_files(top: str) -> dict[str, bytes]:
    return {
        f"{top}/license.txt": b"CC BY-NC-SA 4.0",
        f"{top}/bottle/train/good/000.png": png(100),
        f"{top}/bottle/train/good/001.png": png(110),
        f"{top}/bottle/test/good/000.png": png(105),
        f"{top}/bottle/test/broken/000.png": png(30),
        f"{top}/bottle/ground_truth/broken/000_mask.png": png(255, mask=True),
    }


@pytest.fixture
def server():
    served = ServedFiles()
    base, stop = start_file_server(served)
    yield base, served
    stop()


def serve(monkeypatch, server, name: str, body: bytes, file: str, sha256: str | None = "auto") -> None:
    base, served = server
    served.files[f"/{file}"] = body
    digest = hashlib.sha256(body).hexdigest() if sha256 == "auto" else sha256
    monkeypatch.setitem(dl.DATASETS, name, dataclasses.replace(dl.DATASETS[name], url=f"{base}/{file}", sha256=digest))


def test_mvtec_downloaded_checked_unpacked_and_readable(monkeypatch, server, tmp_path):
    serve(monkeypatch, server, "mvtec", tar_bytes(mvtec_files("mvtec_anomaly_detection")), "mvtec.tar.xz")
    lines = []
    data = dl.download_dataset("mvtec", tmp_path / "datasets", progress=False, echo=lines.append)
    assert data == tmp_path / "datasets" / "mvtec_ad"
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["mvtec_ad"]  # archive deleted
    assert any("license: CC BY-NC-SA 4.0" in line for line in lines)
    assert any("SHA-256 checked" in line for line in lines)
    test = build_dataset("mvtec", data, split="test", image_size=32)
    assert len(test) == 2 and sorted(test.labels) == [0, 1]
    # a second call finds it and downloads nothing
    _, served = server
    before = len(served.requests)
    assert dl.download_dataset("mvtec", tmp_path / "datasets", progress=False, echo=lines.append) == data
    assert len(served.requests) == before


def test_unknown_hash_is_reported(monkeypatch, server, tmp_path):
    body = tar_bytes(mvtec_files("x"), mode="w:gz")
    serve(monkeypatch, server, "btad", body, "btad.tar.gz", sha256=None)
    lines = []
    dl.download_dataset("btad", tmp_path, progress=False, echo=lines.append)
    assert any(hashlib.sha256(body).hexdigest() in line and "no published SHA-256" in line for line in lines)


def test_wrong_hash_keeps_nothing(monkeypatch, server, tmp_path):
    serve(monkeypatch, server, "mvtec", tar_bytes(mvtec_files("m")), "m.tar.xz", sha256="1" * 64)
    with pytest.raises(RuntimeError, match="SHA-256"):
        dl.download_dataset("mvtec", tmp_path, progress=False, echo=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_visa_split_into_the_1cls_layout(monkeypatch, server, tmp_path):
    top = "VisA_20220922"
    csv = (
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,train,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0002.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
    )
    files = {
        f"{top}/split_csv/1cls.csv": csv.encode(),
        f"{top}/candle/Data/Images/Normal/0000.JPG": png(90),
        f"{top}/candle/Data/Images/Normal/0001.JPG": png(95),
        f"{top}/candle/Data/Images/Normal/0002.JPG": png(92),
        f"{top}/candle/Data/Images/Anomaly/000.JPG": png(20),
        f"{top}/candle/Data/Masks/Anomaly/000.png": png(1, mask=True),
    }  # VisA's masks hold labels, not 255
    serve(monkeypatch, server, "visa", tar_bytes(files, mode="w"), "VisA_20220922.tar")
    data = dl.download_dataset("visa", tmp_path, progress=False, echo=lambda line: None)
    converted = data / "VisA_pytorch" / "1cls" / "candle"
    assert sorted(p.name for p in (converted / "train" / "good").iterdir()) == ["0000.JPG", "0001.JPG"]
    mask = np.asarray(Image.open(converted / "ground_truth" / "bad" / "000.png"))
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 64
    test = build_dataset("visa", data / "VisA_pytorch" / "1cls", split="test", image_size=32)
    assert sorted(test.labels) == [0, 1]
    assert float(test[[i for i, y in enumerate(test.labels) if y == 1][0]]["mask"].sum()) > 0


def test_mvtec_loco_masks_merged(monkeypatch, server, tmp_path):
    files = {
        "loco/juice_bottle/train/good/000.png": png(100),
        "loco/juice_bottle/test/good/000.png": png(100),
        "loco/juice_bottle/test/logical_anomalies/000.png": png(10),
        "loco/juice_bottle/ground_truth/logical_anomalies/000/000.png": png(255, mask=True),
        "loco/juice_bottle/ground_truth/logical_anomalies/000/001.png": _mask_at(20),
    }
    serve(monkeypatch, server, "mvtec_loco", tar_bytes(files), "loco.tar.xz")
    data = dl.download_dataset("mvtec_loco", tmp_path, progress=False, echo=lambda line: None)
    merged = np.asarray(Image.open(data / "juice_bottle" / "ground_truth" / "logical_anomalies" / "000_mask.png"))
    assert (merged == 255).sum() == 64 + 16  # the union of both regions
    test = build_dataset("mvtec", data, split="test", image_size=32)
    assert sorted(test.labels) == [0, 1]


def _mask_at(offset: int) -> bytes:
    array = np.zeros((32, 32), np.uint8)
    array[offset : offset + 4, offset : offset + 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_instructions_for_datasets_behind_a_form(tmp_path):
    lines = []
    assert dl.download_dataset("realiad", tmp_path, echo=lines.append) is None
    text = "\n".join(lines)
    assert "huggingface.co/datasets/REAL-IAD/Real-IAD" in text and str(tmp_path / "realiad") in text
    for name in ("goodsad", "aebad", "mpdd", "mad"):
        assert dl.download_dataset(name, tmp_path, echo=lambda line: None) is None
    assert list(tmp_path.iterdir()) == []


# -- malicious archives -------------------------------------------------------------------------
def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "zip-dotdot", "zip-symlink"])
def test_malicious_archive_is_refused_whole(tmp_path, case):
    good = {"data/ok.txt": b"fine"}
    archive = tmp_path / "evil.archive"
    if case == "dotdot":
        archive.write_bytes(tar_bytes({**good, "data/../../escaped.txt": b"x"}))
    elif case == "absolute":
        archive.write_bytes(tar_bytes({**good, str(tmp_path / "absolute.txt"): b"x"}))
    elif case == "symlink":
        archive.write_bytes(tar_bytes(good, extra=[_link("data/link", "/etc/passwd", tarfile.SYMTYPE)]))
    elif case == "hardlink":
        archive.write_bytes(tar_bytes(good, extra=[_link("data/hard", "/etc/passwd", tarfile.LNKTYPE)]))
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            zipped.writestr("data/ok.txt", b"fine")
            if case == "zip-dotdot":
                zipped.writestr("../escaped.txt", b"x")
            else:
                info = zipfile.ZipInfo("data/link")
                info.external_attr = 0o120777 << 16
                zipped.writestr(info, "/etc/passwd")
        archive.write_bytes(buffer.getvalue())
    target = tmp_path / "out" / "dataset"
    with pytest.raises(UnsafeArchiveError, match="nothing was extracted|outside"):
        safe_extract(archive, target)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "absolute.txt").exists()


def test_malicious_download_leaves_nothing(monkeypatch, server, tmp_path):
    serve(
        monkeypatch,
        server,
        "mvtec",
        tar_bytes({"m/bottle/train/good/0.png": png(1), "m/../../../x": b"x"}),
        "evil.tar.xz",
    )
    with pytest.raises(UnsafeArchiveError):
        dl.download_dataset("mvtec", tmp_path / "root", progress=False, echo=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["evil.tar.xz"]  # only the (checked) archive


def test_cli_download(monkeypatch, server, tmp_path, capsys):
    from minimaxad.cli import main

    serve(monkeypatch, server, "mvtec", tar_bytes(mvtec_files("top")), "mvtec.tar.xz")
    assert main(["download", "mvtec", "--root", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"--format mvtec --data {tmp_path / 'mvtec_ad'}" in out
    assert main(["download", "goodsad", "--root", str(tmp_path)]) == 1  # instructions only
    assert "github.com/jianzhang96/GoodsAD" in capsys.readouterr().out
    assert main(["download", "nope", "--root", str(tmp_path)]) == 2
