"""minimaxad.fetch and the hub download of the encoder weights, against a local HTTP server."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from minimaxad.fetch import DownloadError, download_file

from .http_server import ServedFiles, start_file_server

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # several read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    served = ServedFiles(files={"/files/a.bin": PAYLOAD})
    base, stop = start_file_server(served)
    yield base, served
    stop()


def test_download_checks_size_and_hash_and_renames_atomically(server, tmp_path):
    base, served = server
    result = download_file(
        f"{base}/files/a.bin", tmp_path / "a.bin", size=len(PAYLOAD), sha256=PAYLOAD_SHA, progress=False
    )
    assert result.fetched and result.sha256 == PAYLOAD_SHA and result.size == len(PAYLOAD)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]  # no .part left
    again = download_file(f"{base}/files/a.bin", tmp_path / "a.bin", sha256=PAYLOAD_SHA, progress=False)
    assert not again.fetched and len(served.requests) == 1  # the cached file is kept


def test_interrupted_download_resumes_with_range(server, tmp_path):
    base, served = server
    served.cut_after["/files/a.bin"] = [1_000_000]  # the first connection closes after 1 MB
    messages = []
    result = download_file(
        f"{base}/files/a.bin", tmp_path / "a.bin", sha256=PAYLOAD_SHA, progress=False, echo=messages.append
    )
    assert result.sha256 == PAYLOAD_SHA and (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert served.requests == [("/files/a.bin", None), ("/files/a.bin", "bytes=1000000-")]
    assert any("resuming" in m for m in messages)


def test_partial_file_is_kept_and_a_later_call_continues_it(server, tmp_path):
    base, served = server
    served.cut_after["/files/a.bin"] = [700_000, 0, 0]  # 700 kB, then two empty tries: retries run out
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(f"{base}/files/a.bin", tmp_path / "a.bin", progress=False, retries=2)
    part = tmp_path / "a.bin.part"
    assert part.stat().st_size == 700_000 and not (tmp_path / "a.bin").exists()
    result = download_file(f"{base}/files/a.bin", tmp_path / "a.bin", sha256=PAYLOAD_SHA, progress=False)
    assert result.fetched and (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert served.requests[-1] == ("/files/a.bin", "bytes=700000-") and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, served = server
    served.honour_range = False
    (tmp_path / "a.bin.part").write_bytes(b"x" * 5000)  # not a prefix of the file: must not be kept
    result = download_file(f"{base}/files/a.bin", tmp_path / "a.bin", sha256=PAYLOAD_SHA, progress=False)
    assert result.sha256 == PAYLOAD_SHA


def test_wrong_hash_deletes_the_file_and_says_so(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="SHA-256 of the downloaded file is .* expected 0000"):
        download_file(f"{base}/files/a.bin", tmp_path / "a.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match=f"announces {len(PAYLOAD)} bytes, expected 10"):
        download_file(f"{base}/files/a.bin", tmp_path / "a.bin", size=10, progress=False)


def test_missing_file_and_unreachable_server_fail_at_once(server, tmp_path):
    base, served = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{base}/files/nothing.bin", tmp_path / "n.bin", progress=False)
    with pytest.raises(DownloadError, match="127.0.0.1:9/"):
        download_file("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", progress=False)
    assert list(tmp_path.iterdir()) == [] and len(served.requests) == 1


# -- the encoder weights from the hub ------------------------------------------------------------
def _imagenet_like_bytes(backbone: str, tmp_path) -> bytes:
    from minimaxad import MiniMaxAD

    state = MiniMaxAD(backbone).encoder.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("norm0.", "norm1.", "norm2."))}
    state["head.weight"] = torch.zeros(2, 2)  # an ImageNet file also has the classifier
    torch.save(state, tmp_path / "src.pth")
    return (tmp_path / "src.pth").read_bytes()


def test_hub_weights_downloaded_from_the_configured_base_url(tmp_path, monkeypatch):
    from minimaxad import MiniMaxAD
    from minimaxad.models import weights

    file = "unireplknet_f_in1k_224_acc78.6.pth"
    body = _imagenet_like_bytes("unireplknet_f", tmp_path)
    served = ServedFiles(
        files={f"/DingXiaoH/UniRepLKNet/resolve/main/{file}": body},
        cut_after={f"/DingXiaoH/UniRepLKNet/resolve/main/{file}": [len(body) // 3]},
    )
    base, stop = start_file_server(served)
    try:
        monkeypatch.setenv("MINIMAXAD_HUB_URL", base)
        monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path / "cache"))
        monkeypatch.setitem(weights.IMAGENET_FILE_CHECKS, file, (len(body), hashlib.sha256(body).hexdigest()))
        model = MiniMaxAD("unireplknet_f", encoder_weights="hub")
    finally:
        stop()
    assert (tmp_path / "cache" / file).read_bytes() == body
    assert model.encoder_weights_id == f"{file}@sha256:{hashlib.sha256(body).hexdigest()[:16]}"
    assert [r[1] for r in served.requests] == [None, f"bytes={len(body) // 3}-"]  # resumed once


def test_hub_weights_with_a_wrong_hash_are_refused(tmp_path, monkeypatch):
    from minimaxad import MiniMaxAD
    from minimaxad.models import weights

    file = "unireplknet_f_in1k_224_acc78.6.pth"
    served = ServedFiles(files={f"/DingXiaoH/UniRepLKNet/resolve/main/{file}": b"not the weights"})
    base, stop = start_file_server(served)
    try:
        monkeypatch.setenv("MINIMAXAD_HUB_URL", base + "/")
        monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path / "cache"))
        monkeypatch.setitem(weights.IMAGENET_FILE_CHECKS, file, (None, "ab" * 32))
        with pytest.raises(weights.EncoderWeightsError, match="SHA-256 .*--encoder-weights PATH"):
            MiniMaxAD("unireplknet_f", encoder_weights="hub")
    finally:
        stop()
    assert not any((tmp_path / "cache").iterdir())


def test_hub_offline_fails_with_instructions(tmp_path, monkeypatch):
    from minimaxad import MiniMaxAD
    from minimaxad.models.weights import EncoderWeightsError

    monkeypatch.setenv("MINIMAXAD_HUB_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(EncoderWeightsError) as info:
        MiniMaxAD("unireplknet_f", encoder_weights="hub")
    message = str(info.value)
    assert "download failed" in message and "unireplknet_f_in1k_224_acc78.6.pth" in message
    assert "--encoder-weights PATH" in message and "'--encoder-weights none'" in message
