"""The inspection service under what a months-long run meets: cancelled requests, a dying worker,
a failed warm-up, decompression-heavy requests, and a unified model's category that has no
thresholds of its own (through test, predict, serve and watch alike)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'minimaxad[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'minimaxad[serve]')")

from minimaxad.cli import main  # noqa: E402
from minimaxad.inference.backends import Backend  # noqa: E402
from minimaxad.inference.batching import BatcherClosed, MicroBatcher  # noqa: E402
from minimaxad.inference.predict import Predictor  # noqa: E402
from minimaxad.inference.serve import PixelBudget, ServeSettings, build_service, create_app, describe_model, serve  # noqa: E402
from tests.inference.test_serve import GatedBackend, ThreadServer, multipart, post_png, request, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class WorkerKiller(BaseException):
    """Not an Exception: what a bug deep in a native library or a MemoryError-like failure looks like
    to the worker (it escapes the per-batch ``except Exception``)."""


class FailingBackend(Backend):
    """The real backend, but raising ``error`` on calls with more than ``after`` images of input so
    far (0: from the first call, i.e. the warm-up)."""

    def __init__(self, inner: Backend, error: BaseException, after: int = 0) -> None:
        self.inner, self.name, self.device = inner, inner.name, inner.device
        self.error, self.after, self.calls = error, after, 0

    def __call__(self, images):
        self.calls += 1
        if self.calls > self.after:
            raise self.error
        return self.inner(images)


def png_bytes(width: int, height: int, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value // 2, 255 - value)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(trained_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(trained_checkpoint)


@pytest.fixture(scope="module")
def batch(predictor):
    arrays = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    return predictor.preprocess(arrays)[0]


# -- the batching worker -------------------------------------------------------------------------------
def test_a_cancelled_request_leaves_the_worker_alive(predictor, batch):
    gate = GatedBackend(predictor.backend)
    original, predictor.backend = predictor.backend, gate
    batcher = MicroBatcher(predictor, max_batch=1, max_wait_ms=0, max_queue=4).start()
    try:
        assert batcher.wait_ready(60) and batcher.ready
        gate.closed.set()
        (running,) = batcher.submit(batch[:1], [None])  # taken by the worker, held at the gate
        assert gate.entered.wait(30)
        (waiting,) = batcher.submit(batch[1:2], [None])
        assert waiting.cancel()  # its client went away (asyncio.wrap_future cancels it like this)
        gate.opened.set()
        assert running.result(30).batch_size == 1
        (later,) = batcher.submit(batch[2:3], [None])  # the worker is still there to answer it
        assert later.result(30).score == pytest.approx(float(predictor.run(batch[2:3], [None])[1][0]), abs=1e-5)
        assert batcher.ready and batcher.failure is None
    finally:
        predictor.backend = original
        batcher.close(30)


def test_a_future_no_longer_pending_does_not_kill_the_worker(predictor, batch):
    gate = GatedBackend(predictor.backend)
    original, predictor.backend = predictor.backend, gate
    batcher = MicroBatcher(predictor, max_batch=2, max_wait_ms=0, max_queue=4).start()
    try:
        assert batcher.wait_ready(60)
        gate.closed.set()
        (held,) = batcher.submit(batch[:1], [None])
        assert gate.entered.wait(30)
        futures = batcher.submit(batch[1:3], [None, None])
        futures[0].set_running_or_notify_cancel()  # no longer pending when the worker comes to it
        futures[1].cancel()
        gate.opened.set()
        assert held.result(30).batch_size == 1
        (later,) = batcher.submit(batch[2:3], [None])  # the worker skipped both and is still there
        assert later.result(30).batch_size == 1 and batcher.ready
    finally:
        predictor.backend = original
        batcher.close(30)


def test_a_dead_worker_says_so_fails_what_waits_and_refuses_new_images(predictor, batch):
    deaths: list[BaseException] = []
    original = predictor.backend
    predictor.backend = FailingBackend(original, WorkerKiller("native crash"), after=1)  # 1: the warm-up
    batcher = MicroBatcher(predictor, max_batch=1, max_wait_ms=0, max_queue=4, on_death=deaths.append).start()
    try:
        assert batcher.wait_ready(60) and batcher.ready
        first, second = batcher.submit(batch[:2], [None, None])
        for future in (first, second):  # the batch that killed the worker, and the one queued behind it
            with pytest.raises(BatcherClosed, match="native crash"):
                future.result(30)  # answered, not left hanging
        assert not batcher.ready and isinstance(batcher.failure, WorkerKiller)
        assert [type(d) for d in deaths] == [WorkerKiller]
        with pytest.raises(BatcherClosed, match="inference worker has stopped"):
            batcher.submit(batch[2:3], [None])
    finally:
        predictor.backend = original
        batcher.close(30)


def test_failed_warm_up_is_not_ready_and_requests_get_503_with_the_reason(trained_checkpoint):
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    predictor.backend = FailingBackend(predictor.backend, RuntimeError("CUDA out of memory (simulated)"))
    app = create_app(predictor, describe_model(trained_checkpoint, predictor), ServeSettings(workers_threads=1))
    server = ThreadServer(app)
    server.thread.start()
    try:
        deadline, status, body = time.time() + 60, None, b"{}"
        while time.time() < deadline:
            try:
                status, _, body = request(server.port, "GET", "/v1/ready", timeout=5)
            except OSError:  # not listening yet
                status = None
            if status is not None and json.loads(body).get("status") == "failed":
                break
            time.sleep(0.1)
        assert status == 503 and "warm-up failed: CUDA out of memory (simulated)" in json.loads(body)["detail"]
        status, _, answer = post_png(server.port, png_bytes(64, 64))
        assert status == 503 and answer["kind"] == "not_ready" and "CUDA out of memory" in answer["detail"]
    finally:
        server.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_exits_non_zero_when_the_inference_worker_dies(trained_checkpoint, monkeypatch):
    """The process must not live on as a zombie that answers nothing: serve() returns with an
    error (the CLI exits 2), so that systemd or Kubernetes restarts it."""
    monkeypatch.setattr(Predictor, "run", lambda self, batch, thresholds: (_ for _ in ()).throw(WorkerKiller("boom")))
    port, outcome, said = free_port(), {}, []

    def run() -> None:
        try:
            serve(trained_checkpoint, port=port, settings=ServeSettings(workers_threads=1), echo=said.append)
            outcome["returned"] = True
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_ready(port)
    status, _, answer = post_png(port, png_bytes(64, 64))
    assert status == 503 and "inference worker has stopped" in answer["detail"]
    thread.join(60)
    assert not thread.is_alive() and "inference worker stopped: WorkerKiller: boom" in outcome.get("error", "")
    assert any("exiting" in line for line in said)


# -- memory ----------------------------------------------------------------------------------------------
def test_pixel_budget_holds_its_limit_and_serves_in_order():
    import asyncio

    budget, order = PixelBudget(100), []

    async def hold(name: str, pixels: int, seconds: float) -> None:
        async with budget.reserve(pixels):
            order.append(name)
            assert budget.in_use <= budget.limit
            await asyncio.sleep(seconds)

    async def scenario() -> None:
        await asyncio.gather(hold("a", 60, 0.05), hold("b", 60, 0.01), hold("c", 30, 0.01))

    asyncio.run(scenario())
    # c would fit beside a, but b came first: first come, first served, so b is not starved
    assert budget.peak <= 100 and budget.in_use == 0 and order == ["a", "b", "c"]
    with pytest.raises(ValueError, match="can never fit"):
        asyncio.run(budget.reserve(101).__aenter__())


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's memory from /proc (Linux)")
def test_memory_stays_under_its_bound_under_decompression_heavy_requests(trained_checkpoint, tmp_path):
    """Small bodies that decode to many pixels: one request of 16 photos of 4000 x 4000 (each under
    the per-image limit; 256 Mpx in all, 770 MB decoded: the old server decoded every one), and 6
    concurrent requests that each fit the per-request limit and ask for heatmaps."""
    settings = dict(max_pixels=16_000_000, max_request_pixels=20_000_000, max_decoded_pixels=20_000_000)
    port = free_port()
    command = [sys.executable, "-m", "minimaxad.cli", "serve", "--checkpoint", str(trained_checkpoint)]
    command += ["--port", str(port), "--workers-threads", "2", "--max-request-mb", "20", "--log-level", "warning"]
    command += ["--max-pixels", "16000000", "--max-request-pixels", "20000000", "--max-decoded-pixels", "20000000"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_ready(port, process=server)
        small = png_bytes(64, 64)
        assert post_png(port, small)[0] == 200
        idle = rss_mb(server.pid)
        big = png_bytes(4000, 4000)  # ~50 KB of PNG, 48 MB decoded
        body, content_type = multipart([(f"{i}.png", big) for i in range(16)])
        assert len(body) < 2_000_000
        status, _, raw = request(port, "POST", "/v1/predict", body, {"Content-Type": content_type}, timeout=120)
        assert status == 413 and "max-request-pixels" in json.loads(raw)["detail"]
        assert rss_mb(server.pid, "VmHWM") - idle < 150  # nothing was decoded
        from concurrent.futures import ThreadPoolExecutor

        two, content_type = multipart([("a.png", png_bytes(3000, 3000)), ("b.png", png_bytes(3000, 3000, 40))])
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: request(
                        port, "POST", "/v1/predict?return=heatmap", two, {"Content-Type": content_type}, timeout=300
                    ),
                    range(6),
                )
            )
        assert [a[0] for a in answers] == [200] * 6
        assert all(len(json.loads(a[2])["results"]) == 2 for a in answers)
        grown = rss_mb(server.pid, "VmHWM") - idle
        # the bound of docs/serving.md: max_connections x max_request_mb of bodies (here 6 requests of
        # ~0.1 MB) + ~40 bytes per decoded pixel held (photos, the map and heatmap being drawn, PNGs)
        bound = 40 * settings["max_decoded_pixels"] / 2**20 + 100
        assert grown < bound, f"server grew by {grown:.0f} MB under load; the bound is {bound:.0f} MB"
        status, _, info = request(port, "GET", "/v1/model")
        assert json.loads(info)["max_decoded_pixels"] == 20_000_000
    finally:
        server.terminate()
        server.wait(60)


# -- a category without thresholds of its own -----------------------------------------------------------
@pytest.fixture(scope="module")
def lopsided_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A unified model whose 'washer' category had 4 training images: 1 held out, too few for
    thresholds of its own ('weave' has 12: 3 held out)."""
    root = tmp_path_factory.mktemp("lopsided") / "data"
    shutil.copytree(synthetic_root, root)
    for extra in sorted((root / "washer" / "train" / "good").iterdir())[4:]:
        extra.unlink()
    out = root.parent / "run"
    arguments = ["fit", "--data", str(root), "--unified", "--output", str(out), "--backbone", "unireplknet_micro"]
    arguments += ["--encoder-weights", "none", "--image-size", "64", "--batch-size", "4", "--max-steps", "4"]
    assert main(arguments + ["--val-fraction", "0.25", "--quiet"]) == 0
    return out / "checkpoint.pt"


def test_a_category_without_own_thresholds_decides_with_the_models_everywhere(
    lopsided_checkpoint, synthetic_root, tmp_path
):
    from minimaxad.engine.checkpoint import read_checkpoint

    calibration = read_checkpoint(lopsided_checkpoint)["thresholds"]
    assert sorted(calibration["per_category"]) == ["weave"]  # washer: one held-out image only
    model_threshold = calibration["image"]["value"]
    note = "the model's threshold: category 'washer' has no calibration of its own"
    photo = synthetic_root / "washer" / "test" / "hole" / "000.png"

    predictor = Predictor.from_checkpoint(lopsided_checkpoint)
    assert predictor.categories == ["washer", "weave"]
    rule = predictor.thresholds_for("washer")
    assert rule.image.value == pytest.approx(model_threshold) and rule.image.note.startswith(note)
    with pytest.raises(ValueError, match="unknown category 'bolt'"):
        predictor.thresholds_for("bolt")

    # predict
    out = tmp_path / "predicted"
    arguments = ["predict", "--checkpoint", str(lopsided_checkpoint), str(photo), "--output", str(out)]
    assert main(arguments + ["--category", "washer", "--quiet"]) == 0
    summary = json.loads((out / "scores.json").read_text())
    assert summary["image_threshold"] == pytest.approx(model_threshold)
    assert summary["image_threshold_note"].startswith(note)
    score = summary["predictions"][0]["score"]
    decision = "anomalous" if score >= model_threshold else "normal"
    assert summary["predictions"][0]["decision"] == decision

    # test: the report and metrics use the same rule
    tested = tmp_path / "tested"
    assert main(["test", "--checkpoint", str(lopsided_checkpoint), "--output", str(tested), "--quiet"]) == 0
    assert "has no calibration of its own" in (tested / "report.html").read_text()

    # serve: 200 with the model's threshold, and no announced image left behind to stall later batches
    app = build_service(lopsided_checkpoint, settings=ServeSettings(workers_threads=1, max_wait_ms=2000))
    with ThreadServer(app) as running:
        status, _, answer = post_png(running.port, photo.read_bytes(), "?category=washer")
        assert status == 200, answer
        result = answer["results"][0]
        assert result["score"] == pytest.approx(score, rel=1e-5)
        assert result["threshold"] == pytest.approx(model_threshold) and result["decision"] == decision
        assert result["threshold_source"].startswith(note)
        assert app.state.batcher._incoming == 0
        started = time.perf_counter()
        assert post_png(running.port, photo.read_bytes())[0] == 200
        assert time.perf_counter() - started < 1.5  # no 2 s wait for an image that never comes
        status, _, answer = post_png(running.port, photo.read_bytes(), "?category=bolt")
        assert status == 422 and answer["kind"] == "unknown_category" and app.state.batcher._incoming == 0

    # watch
    inbox, results = tmp_path / "inbox", tmp_path / "watched"
    inbox.mkdir()
    shutil.copy(photo, inbox / "p.png")
    os.utime(inbox / "p.png", (time.time() - 60, time.time() - 60))
    arguments = ["watch", str(inbox), "--checkpoint", str(lopsided_checkpoint), "--output", str(results)]
    assert main(arguments + ["--category", "washer", "--once", "--settle-seconds", "0"]) == 0
    (record,) = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert record["threshold"] == pytest.approx(model_threshold) and record["decision"] == decision


# -- connections that send nothing, or stop mid-body ------------------------------------------------------
def test_idle_connections_are_closed_so_they_cannot_lock_the_service_out(trained_checkpoint):
    """uvicorn counts a connection that never sends a request against --max-connections and never
    closes it: enough of them (a leaking client, a port scanner) made every request 503."""
    import uvicorn

    from minimaxad.inference.serve import request_deadline_protocol

    settings = ServeSettings(workers_threads=1, max_connections=3, client_timeout_s=1.0)
    app = build_service(trained_checkpoint, settings=settings)
    server = ThreadServer(app)
    server.server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            limit_concurrency=settings.max_connections,
            http=request_deadline_protocol(settings.client_timeout_s),
        )
    )
    server.thread = threading.Thread(target=server.server.run, kwargs={"sockets": [server.sock]}, daemon=True)
    with server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
        idle[1].sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # part of a head, never finished
        try:
            assert request(server.port, "GET", "/v1/ready")[0] == 503  # all 3 places taken
            time.sleep(1.5)
            for sock in idle:
                assert sock.recv(100) == b""  # closed by the server
            assert request(server.port, "GET", "/v1/ready")[0] == 200
            assert post_png(server.port, png_bytes(64, 64))[0] == 200
        finally:
            for sock in idle:
                sock.close()


def test_a_body_that_stops_arriving_gets_408(trained_checkpoint):
    app = build_service(trained_checkpoint, settings=ServeSettings(workers_threads=1, client_timeout_s=1.0))
    with ThreadServer(app) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")
            sock.sendall(b"Content-Length: 1000\r\n\r\n" + png_bytes(64, 64)[:100])
            started, answer = time.perf_counter(), b""
            while not answer.endswith(b"}"):  # head and body may come in separate segments
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
            answer = answer.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408") and "--client-timeout" in answer
        assert 0.8 < time.perf_counter() - started < 5
        assert post_png(running.port, png_bytes(64, 64))[0] == 200
