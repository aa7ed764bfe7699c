"""minimaxad.fetch and the hub download of the encoder weights, against a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time

import pytest
import torch

from minimaxad.fetch import MAX_RETRY_AFTER, DownloadError, download_file

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


# -- a busy or failing server: 429 and 5xx are asked again, other errors fail at once ------------
@pytest.fixture
def busy_server():
    """A server that answers the statuses queued in ``script`` (path -> [(status, Retry-After)])
    before serving the file; every request is recorded in ``seen``."""
    script: dict[str, list[tuple[int, str | None]]] = {}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's naming)
            seen.append(self.path)
            queued = script.get(self.path)
            status, retry_after = queued.pop(0) if queued else (200, None)
            body = PAYLOAD if status == 200 else f"status {status}".encode()
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script, seen
    httpd.shutdown()
    httpd.server_close()


def test_a_busy_server_is_asked_again_after_its_retry_after(busy_server, tmp_path):
    base, script, seen = busy_server
    script["/a.bin"] = [(503, "2"), (503, None)]  # twice "come back later", then the file
    pauses, messages = [], []
    result = download_file(
        f"{base}/a.bin",
        tmp_path / "a.bin",
        sha256=PAYLOAD_SHA,
        progress=False,
        echo=messages.append,
        sleep=pauses.append,
    )
    assert result.fetched and (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert seen == ["/a.bin"] * 3
    assert pauses == [2.0, 1.0]  # the server's Retry-After, then the backoff of the second attempt
    assert messages[0] == "the server answered HTTP 503 Service Unavailable; trying again in 2 s (1/3)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.parametrize("status", [429, 500, 502, 504])
def test_a_server_that_stays_busy_fails_after_the_retries_naming_url_and_status(busy_server, tmp_path, status):
    base, script, seen = busy_server
    script["/a.bin"] = [(status, "3600")] * 10  # an hour: cut to MAX_RETRY_AFTER
    pauses = []
    with pytest.raises(DownloadError) as caught:
        download_file(f"{base}/a.bin", tmp_path / "a.bin", progress=False, retries=2, sleep=pauses.append)
    message = str(caught.value)
    assert message.startswith(f"{base}/a.bin: the server answered HTTP {status} ")
    assert "3 times in a row" in message and "run again later" in message
    assert seen == ["/a.bin"] * 3 and pauses == [MAX_RETRY_AFTER] * 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 403])
def test_not_found_and_forbidden_fail_at_once(busy_server, tmp_path, status):
    base, script, seen = busy_server
    script["/a.bin"] = [(status, "1")] * 5
    pauses = []
    with pytest.raises(DownloadError, match=f"/a.bin: HTTP {status} "):
        download_file(f"{base}/a.bin", tmp_path / "a.bin", progress=False, sleep=pauses.append)
    assert seen == ["/a.bin"] and pauses == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "header,seconds",
    [(None, None), ("5", 5.0), (" 0 ", 0.0), ("-3", 0.0), ("86400", 30.0), ("soon", None), ("nan", None)],
)
def test_retry_after_is_read_in_seconds_and_capped(header, seconds):
    from minimaxad.fetch import _retry_after

    assert _retry_after(header) == seconds


def test_retry_after_as_an_http_date():
    from email.utils import formatdate

    from minimaxad.fetch import _retry_after

    assert 5.0 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10.0
    assert _retry_after(formatdate(time.time() - 100, usegmt=True)) == 0.0


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

    file = "unireplknet_f_in1k_224_acc78.58.pth"
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

    file = "unireplknet_f_in1k_224_acc78.58.pth"
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
    assert "download failed" in message and "unireplknet_f_in1k_224_acc78.58.pth" in message
    assert "--encoder-weights PATH" in message and "'--encoder-weights none'" in message
