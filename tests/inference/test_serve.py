"""``minimaxad serve`` against real uvicorn servers on free loopback ports.

The servers run the tiny trained model of ``tests/conftest.py`` (64 px); request loops are bounded.
Scores must equal :meth:`Predictor.predict` on the same photos.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="minimaxad serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="minimaxad serve needs the serve extra: pip install -e '.[serve]'")

from minimaxad.inference.backends import Backend  # noqa: E402
from minimaxad.inference.predict import Predictor  # noqa: E402
from minimaxad.inference.serve import ServeSettings, build_service, create_app, describe_model  # noqa: E402
from minimaxad.reporting.heatmaps import defect_mask  # noqa: E402
from tests.browser import CHROME  # noqa: E402

TOL = 1e-6


# -- a tiny HTTP client and server harness ---------------------------------------------------
def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post_png(port: int, data: bytes, query: str = "", headers: dict | None = None) -> tuple[int, dict, dict]:
    status, head, body = request(
        port, "POST", f"/v1/predict{query}", data, {"Content-Type": "image/png", **(headers or {})}
    )
    return status, head, json.loads(body)


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = "minimaxad-test-boundary-7d1f"
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def metric(port: int, name: str, headers: dict | None = None) -> float:
    """The value of one sample line of /metrics (0 when absent)."""
    status, _, body = request(port, "GET", "/metrics", headers=headers)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


class ThreadServer:
    """uvicorn serving ``app`` in a thread, on a socket bound here (no port race)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_ready(self.port)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def wait_ready(port: int, timeout: float = 60, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if request(port, "GET", "/v1/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server on port {port} not ready after {timeout} s")


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(synthetic_root) -> dict[str, bytes]:
    """Four PNG photos (two per category, one defective) and odd sizes/modes, as bytes."""
    files = {
        "weave_good": synthetic_root / "weave" / "test" / "good" / "000.png",
        "weave_good2": synthetic_root / "weave" / "test" / "good" / "001.png",
        "washer_good": synthetic_root / "washer" / "test" / "good" / "000.png",
        "washer_hole": synthetic_root / "washer" / "test" / "hole" / "000.png",
    }
    out = {name: path.read_bytes() for name, path in files.items()}
    base = Image.open(files["weave_good"]).convert("RGB")
    buffer = io.BytesIO()
    base.resize((97, 61)).convert("L").save(buffer, format="PNG")
    out["gray_97x61"] = buffer.getvalue()
    return out


@pytest.fixture(scope="module")
def predictor(trained_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(trained_checkpoint)


@pytest.fixture(scope="module")
def expected(predictor, photos) -> dict[str, dict]:
    """What Predictor.predict says for each photo (model thresholds), one call for all."""
    names = list(photos)
    images = [Image.open(io.BytesIO(photos[n])) for n in names]
    result = predictor.predict(images)
    return {
        n: {
            "score": float(result.scores[i]),
            "decision": "anomalous" if result.is_anomalous[i] else "normal",
            "normalized": float(result.normalized_scores[i]),
            "map": result.maps[i],
            "size": result.sizes[i],
        }
        for i, n in enumerate(names)
    }


SETTINGS = dict(max_batch=8, max_wait_ms=40, max_queue=64, max_request_mb=1, max_pixels=1_000_000, workers_threads=2)


@pytest.fixture(scope="module")
def server(trained_checkpoint):
    app = build_service(trained_checkpoint, settings=ServeSettings(**SETTINGS))
    with ThreadServer(app) as running:
        yield running


# -- the API ------------------------------------------------------------------------------------
def test_probes_model_and_page(server, trained_checkpoint):
    assert json.loads(request(server.port, "GET", "/v1/health")[2]) == {"status": "alive"}
    status, _, body = request(server.port, "GET", "/v1/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _, body = request(server.port, "GET", "/v1/model")
    info = json.loads(body)
    sha = hashlib.sha256(Path(trained_checkpoint).read_bytes()).hexdigest()
    assert info["checkpoint"]["sha256"] == sha and info["model_id"].endswith(sha[:12])
    assert info["backbone"] == "unireplknet_micro" and info["image_size"] == 64
    assert info["categories"] == ["washer", "weave"]
    assert set(info["category_thresholds"]) == {"washer", "weave"}
    assert isinstance(info["thresholds"]["image"]["value"], float)
    status, _, body = request(server.port, "GET", "/openapi.json")
    paths = json.loads(body)["paths"]
    assert {"/v1/predict", "/v1/model", "/v1/health", "/v1/ready"} <= set(paths)
    assert {"multipart/form-data", "image/png"} <= set(paths["/v1/predict"]["post"]["requestBody"]["content"])
    status, head, page = request(server.port, "GET", "/")
    assert status == 200 and head["content-type"].startswith("text/html") and b"/static/app.js" in page
    for asset in ("app.js", "style.css"):
        status, _, data = request(server.port, "GET", f"/static/{asset}")
        assert status == 200 and len(data) > 500
    assert b"http://" not in page and b"https://" not in page  # no CDN: the page works offline


def test_raw_png_equals_predictor(server, photos, expected):
    for name, data in photos.items():
        status, _, body = post_png(server.port, data)
        assert status == 200, body
        (result,) = body["results"]
        assert result["score"] == pytest.approx(expected[name]["score"], rel=TOL, abs=TOL), name
        assert result["decision"] == expected[name]["decision"]
        assert result["normalized_score"] == pytest.approx(expected[name]["normalized"], abs=TOL)
        assert (result["width"], result["height"]) == expected[name]["size"]
        assert result["model_id"] == body["model_id"] and "heatmap_png" not in result
        assert result["timing_ms"]["total"] >= result["timing_ms"]["inference"] > 0


def test_multipart_several_images_with_pictures(server, photos, expected, predictor):
    names = ["washer_hole", "gray_97x61", "weave_good"]
    body, content_type = multipart([(f"{n}.png", photos[n]) for n in names], {"category": "washer"})
    status, _, raw = request(
        server.port, "POST", "/v1/predict?return=heatmap,mask", body, {"Content-Type": content_type}
    )
    assert status == 200, raw
    results = json.loads(raw)["results"]
    washer = predictor.predict([Image.open(io.BytesIO(photos[n])) for n in names], category="washer")
    washer_thr = predictor.thresholds_for("washer")
    pixel = washer_thr.pixel.value
    for i, (name, result) in enumerate(zip(names, results)):
        assert result["name"] == f"{name}.png" and result["index"] == i and result["category"] == "washer"
        assert result["score"] == pytest.approx(expected[name]["score"], rel=TOL, abs=TOL)
        assert result["threshold"] == pytest.approx(washer_thr.image.value)
        assert result["decision"] == ("anomalous" if washer.is_anomalous[i] else "normal")
        heat = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
        mask = Image.open(io.BytesIO(base64.b64decode(result["mask_png"])))
        assert heat.size == mask.size == expected[name]["size"] and heat.mode == "RGB"
        reference = np.asarray(defect_mask(washer.maps[i], pixel, size=expected[name]["size"]))
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert (np.asarray(mask) == reference).mean() > 0.999


def test_request_threshold_overrides(server, photos, expected):
    score = expected["weave_good"]["score"]
    for threshold, decision in ((score - 1e-3, "anomalous"), (score + 1e-3, "normal")):
        status, _, body = post_png(server.port, photos["weave_good"], f"?threshold={threshold!r}")
        assert status == 200
        assert body["results"][0]["decision"] == decision
        assert body["results"][0]["threshold"] == pytest.approx(threshold)
        assert body["results"][0]["threshold_source"] == "request"


def test_concurrent_requests_are_batched(server, photos, expected):
    names = [n for n in photos if n != "gray_97x61"]
    batches_before = metric(server.port, "minimaxad_batch_size_count")
    singles_before = metric(server.port, 'minimaxad_batch_size_bucket{le="1.0"}')

    def one(i: int):
        name = names[i % len(names)]
        status, _, body = post_png(server.port, photos[name])
        return name, status, body

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(64)))
    for name, status, body in answers:
        assert status == 200, body
        assert body["results"][0]["score"] == pytest.approx(expected[name]["score"], rel=TOL, abs=TOL)
        assert body["results"][0]["decision"] == expected[name]["decision"]
    batches = metric(server.port, "minimaxad_batch_size_count") - batches_before
    singles = metric(server.port, 'minimaxad_batch_size_bucket{le="1.0"}') - singles_before
    images = metric(server.port, "minimaxad_batch_size_sum")
    assert 0 < batches < 64  # 64 images in fewer batches: some batches held several requests
    assert singles < batches  # at least one batch of more than one image
    assert max(body["results"][0]["batch_size"] for _, _, body in answers) > 1
    assert images >= 64
    assert metric(server.port, "minimaxad_queue_depth") == 0


def _png_header_only(width: int, height: int) -> bytes:
    """A small PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_bad_inputs_answered_while_good_requests_succeed(server, photos, expected):
    good = photos["washer_good"]
    lab = io.BytesIO()
    Image.new("LAB", (32, 32)).save(lab, format="TIFF")
    bad = {
        "not an image": (b"just some text, not a photo", 400, "not an image"),
        "truncated": (good[: len(good) // 3], 400, "truncated"),
        "zero bytes": (b"", 400, "empty"),
        "over our pixel limit": (_png_header_only(2000, 1000), 400, "more than the limit"),
        "over Pillow's bomb limit": (_png_header_only(50_000, 50_000), 400, "too large"),
        "wrong mode": (lab.getvalue(), 400, "colour mode LAB"),
        "body too large": (os.urandom(int(1.5 * 2**20)), 413, "over the limit"),
    }
    errors_before = metric(server.port, 'minimaxad_errors_total{kind="bad_image"}')

    def send(item):
        kind, (data, _, _) = item
        return kind, post_png(server.port, data)

    def send_good(_):
        return "good", post_png(server.port, good)

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(send, item) for item in bad.items()] + [pool.submit(send_good, i) for i in range(8)]
        futures.append(pool.submit(lambda: ("category", post_png(server.port, good, "?category=bolts"))))
        answers = [f.result() for f in futures]
    for kind, (status, _, body) in answers:
        if kind == "good":
            assert status == 200
            assert body["results"][0]["score"] == pytest.approx(expected["washer_good"]["score"], rel=TOL, abs=TOL)
        elif kind == "category":
            assert status == 422 and "bolts" in body["detail"] and "washer, weave" in body["detail"]
        else:
            _, code, reason = bad[kind]
            assert status == code, (kind, body)
            assert reason in body["detail"], (kind, body["detail"])
    assert metric(server.port, 'minimaxad_errors_total{kind="bad_image"}') - errors_before == 6
    assert metric(server.port, 'minimaxad_errors_total{kind="too_large"}') >= 1
    # in a request of several images, the reason is given for the bad one
    body, content_type = multipart([("ok.png", good), ("broken.png", good[:200])])
    status, _, raw = request(server.port, "POST", "/v1/predict", body, {"Content-Type": content_type})
    answer = json.loads(raw)
    assert status == 400 and [e["index"] for e in answer["errors"]] == [1]
    assert answer["errors"][0]["name"] == "broken.png" and "truncated" in answer["errors"][0]["error"]
    # a client's file name is never used as a path: it only comes back as text
    body, content_type = multipart([("../../etc/passwd", good)])
    status, _, raw = request(server.port, "POST", "/v1/predict", body, {"Content-Type": content_type})
    assert status == 200 and json.loads(raw)["results"][0]["name"] == "../../etc/passwd"
    # options are checked: unknown return= and a threshold that is not a number
    assert post_png(server.port, good, "?return=photo")[0] == 422
    assert post_png(server.port, good, "?threshold=abc")[0] == 422
    assert request(server.port, "GET", "/v1/health")[0] == 200  # still alive


def test_client_leaving_mid_upload_leaves_the_service_up(server, photos, expected):
    before = metric(server.port, 'minimaxad_errors_total{kind="disconnected"}')
    sock = _send_half(server.port, photos["weave_good"])
    time.sleep(0.3)
    sock.close()  # gone before the body ended
    deadline = time.time() + 10
    while metric(server.port, 'minimaxad_errors_total{kind="disconnected"}') == before and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server.port, 'minimaxad_errors_total{kind="disconnected"}') == before + 1
    status, _, body = post_png(server.port, photos["weave_good"])
    assert status == 200
    assert body["results"][0]["score"] == pytest.approx(expected["weave_good"]["score"], rel=TOL, abs=TOL)


def test_serves_an_exported_onnx_file(trained_checkpoint, photos, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install -e '.[onnx]'")
    from minimaxad.cli import main

    model = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(model)]) == 0
    onnx_predictor = Predictor.from_checkpoint(model)
    names = ["washer_hole", "weave_good"]
    truth = onnx_predictor.predict([Image.open(io.BytesIO(photos[n])) for n in names]).scores
    with ThreadServer(build_service(model, settings=ServeSettings(workers_threads=1))) as running:
        info = json.loads(request(running.port, "GET", "/v1/model")[2])
        assert info["backend"] == "onnxruntime" and info["checkpoint"]["exported"] is True
        assert info["checkpoint"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        for name, score in zip(names, truth):
            status, _, body = post_png(running.port, photos[name])
            assert status == 200
            assert body["results"][0]["score"] == pytest.approx(float(score), rel=TOL, abs=TOL)


class GatedBackend(Backend):
    """The real backend, but a batch waits at a gate while ``closed`` (queue-full test)."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name, self.device = inner, inner.name, inner.device
        self.closed = threading.Event()
        self.opened = threading.Event()
        self.entered = threading.Event()

    def __call__(self, images):
        if self.closed.is_set():
            self.entered.set()
            self.opened.wait(30)
        return self.inner(images)


def test_queue_full_answers_503(trained_checkpoint, photos, expected):
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    gate = GatedBackend(predictor.backend)
    predictor.backend = gate
    settings = ServeSettings(max_batch=1, max_wait_ms=0, max_queue=1, workers_threads=2)
    app = create_app(predictor, describe_model(trained_checkpoint, predictor), settings)
    data = photos["weave_good"]
    with ThreadServer(app) as running, ThreadPoolExecutor(2) as pool:
        gate.closed.set()
        first = pool.submit(post_png, running.port, data)  # taken by the worker, held at the gate
        assert gate.entered.wait(30)
        second = pool.submit(post_png, running.port, data)  # waits in the queue (its one place)
        deadline = time.time() + 30
        while app.state.batcher.depth < 1 and time.time() < deadline:
            time.sleep(0.01)
        status, head, body = post_png(running.port, data)
        assert status == 503 and head["retry-after"] == "1" and body["kind"] == "queue_full"
        gate.opened.set()
        for future in (first, second):
            status, _, body = future.result(60)
            assert status == 200
            assert body["results"][0]["score"] == pytest.approx(expected["weave_good"]["score"], rel=TOL, abs=TOL)
        assert metric(running.port, 'minimaxad_errors_total{kind="queue_full"}') == 1


def test_api_key_refusal(trained_checkpoint, photos, tmp_path):
    from minimaxad.inference.serve import read_api_key

    key_file = tmp_path / "key.txt"
    key_file.write_text("s3cret-station-key\n")
    settings = ServeSettings(api_key=read_api_key(key_file), workers_threads=1)
    with ThreadServer(build_service(trained_checkpoint, settings=settings)) as running:
        data = photos["weave_good"]
        status, head, body = post_png(running.port, data)
        assert status == 401 and "API key" in body["detail"] and head["www-authenticate"] == "Bearer"
        assert post_png(running.port, data, headers={"X-API-Key": "wrong-key-123"})[0] == 401
        assert request(running.port, "GET", "/v1/model")[0] == 401
        assert request(running.port, "GET", "/metrics")[0] == 401
        assert post_png(running.port, data, headers={"X-API-Key": "s3cret-station-key"})[0] == 200
        assert post_png(running.port, data, headers={"Authorization": "Bearer s3cret-station-key"})[0] == 200
        assert request(running.port, "GET", "/v1/health")[0] == 200  # probes stay open
        assert request(running.port, "GET", "/v1/ready")[0] == 200
        assert request(running.port, "GET", "/")[0] == 200  # the page asks for the key itself
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match="shorter than 8"):
        read_api_key(tmp_path / "short.txt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _send_half(port: int, data: bytes) -> socket.socket:
    """Open a request and send its headers and half its body: it is in flight until the rest comes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[: len(data) // 2]
    )
    return sock


def _finish(sock: socket.socket, data: bytes) -> tuple[int, dict]:
    sock.sendall(data[len(data) // 2 :])
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read())
    sock.close()
    return response.status, body


@pytest.mark.slow
def test_cli_serve_drains_in_flight_requests_on_sigterm(trained_checkpoint, photos, expected):
    """``minimaxad serve`` in its own process gets SIGTERM while three requests are in flight
    (their bodies half sent): it takes no new connection, answers the three, then shuts down."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minimaxad",
            "serve",
            "--checkpoint",
            str(trained_checkpoint),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(port, process=process)
        names = ["weave_good", "washer_good", "washer_hole"]
        in_flight = [_send_half(port, photos[n]) for n in names]
        time.sleep(0.5)  # the server has read their headers: the requests are running
        process.send_signal(signal.SIGTERM)
        deadline = time.time() + 20
        while time.time() < deadline:  # the listening socket closes first
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                break
        else:
            raise AssertionError("the server still accepts connections after SIGTERM")
        assert process.poll() is None  # ... but it waits for the requests in flight
        for name, sock in zip(names, in_flight):
            status, body = _finish(sock, photos[name])
            assert status == 200, body
            assert body["results"][0]["score"] == pytest.approx(expected[name]["score"], rel=TOL, abs=TOL)
        # uvicorn re-raises the signal once shut down cleanly: the exit status is SIGTERM's
        assert process.wait(30) in (0, -signal.SIGTERM)
        log = process.stderr.read()
        assert "Waiting for application shutdown" in log and "Application shutdown complete" in log, log[-2000:]
        assert "ERROR" not in log and "Traceback" not in log, log[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- the web page in headless Chromium ----------------------------------------------------------
BROWSER_SCRIPT = (
    CHROME
    + """
url, photo, profile, shot = sys.argv[1:5]
driver = start_chrome(profile, "1280,1100")
try:
    driver.set_page_load_timeout(60)
    driver.get(url)
    picker = driver.find_element(By.ID, "file-input")
    driver.execute_script("arguments[0].style.display = 'block';", picker)  # hidden behind its label
    picker.send_keys(photo)
    deadline = time.time() + 60
    while time.time() < deadline:
        text = driver.find_element(By.ID, "decision").text
        overlay = driver.execute_script("const i = document.getElementById('overlay');"
                                        "return i.complete ? i.naturalWidth : 0;")
        if text in ("NORMAL", "ANOMALOUS") and overlay > 0:
            break
        time.sleep(0.1)
    out = {"decision": driver.find_element(By.ID, "decision").text,
           "score": driver.find_element(By.ID, "score").text,
           "threshold": driver.find_element(By.ID, "threshold").text,
           "images": driver.execute_script("return ['photo', 'overlay', 'mask'].map(id => "
                                           "document.getElementById(id).naturalWidth);"),
           "history": len(driver.find_elements(By.CSS_SELECTOR, "#history .item")),
           "status": driver.find_element(By.ID, "status").text,
           "errors": [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]}
    out["screenshot"] = driver.save_screenshot(shot)
    print(json.dumps(out))
finally:
    driver.quit()
"""
)


@pytest.mark.browser
def test_web_page_in_headless_chromium(server, photos, expected, tmp_path):
    """Upload a photo through the page; the decision, the score and the pictures appear. The
    browser is driven from a child process (as the report test does)."""
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed (pip install selenium)")
    for binary, package in (("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} not found (apt-get install {package})")
    photo = tmp_path / "washer_hole.png"
    photo.write_bytes(photos["washer_hole"])
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BROWSER_SCRIPT,
            f"http://127.0.0.1:{server.port}/",
            str(photo),
            str(tmp_path / "chromium-profile"),
            str(shot),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    want = expected["washer_hole"]
    assert out["decision"] == want["decision"].upper()
    assert float(out["score"]) == pytest.approx(want["score"], rel=1e-3)  # shown with 4 significant digits
    assert all(width == 64 for width in out["images"]), out["images"]  # photo, overlay, mask rendered
    assert out["history"] == 1 and out["status"] == "ready"
    assert not out["errors"], out["errors"]
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and np.asarray(im.convert("L")).std() > 10
    if os.environ.get("MINIMAXAD_SERVE_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["MINIMAXAD_SERVE_SCREENSHOT"])


# -- the micro-batcher on its own ---------------------------------------------------------------
def test_batcher_waits_only_for_announced_images(predictor):
    import torch

    from minimaxad.inference.batching import MicroBatcher, QueueFull

    sizes: list[int] = []
    batcher = MicroBatcher(predictor, max_batch=4, max_wait_ms=3000, max_queue=4, on_batch=sizes.append).start()
    try:
        assert batcher.wait_ready(60) and batcher.warmup_error is None
        arrays = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
        truth = predictor.predict(arrays).scores
        images, _ = predictor.preprocess(arrays)
        started = time.perf_counter()
        (alone,) = batcher.submit(images[:1], [None])
        assert alone.result(30).score == pytest.approx(float(truth[0]), rel=TOL, abs=TOL)
        assert time.perf_counter() - started < 2.0  # nobody else announced: no 3 s wait
        batcher.expect(2)  # two requests are decoding: the first waits for the second
        first = batcher.submit(images[1:2], [None], expected=True)
        time.sleep(0.2)
        second = batcher.submit(images[2:3], [None], expected=True)
        results = [f.result(30) for f in first + second]
        assert sizes == [1, 2] and [r.batch_size for r in results] == [2, 2]
        assert [r.score for r in results] == pytest.approx([float(t) for t in truth[1:]], rel=TOL, abs=TOL)
        with pytest.raises(QueueFull):  # 6 images never fit a queue of 4: all or none
            batcher.submit(torch.cat([images, images]), [None] * 6)
        assert batcher.depth == 0
    finally:
        batcher.close(30)
    with pytest.raises(ValueError, match="max_queue"):
        MicroBatcher(predictor, max_batch=8, max_queue=4)
