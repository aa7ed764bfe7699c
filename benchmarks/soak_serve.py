"""Soak test of ``minimaxad serve``: a bounded run of an inspection station's life under mixed load.

The service is meant to run for months (issue 23). This script starts the real server as a child
process on 127.0.0.1 and, for a bounded time (10 minutes by default), drives it with a mixed load of
well-behaved and misbehaving clients, each a thread with its own loop bounded in time and count:

1. good photos: raw PNG/JPEG bodies and multipart uploads of the synthetic test images and of a few
   1500x1000 photos, some with ``?return=heatmap,mask`` (expected: 200 with a full answer);
2. bad bytes: random bytes, truncated PNGs, empty bodies, a multipart part of noise (expected: 400);
3. decompression-heavy uploads: 16 small PNGs that decode to 4000x4000 each (413, over
   --max-request-pixels), one 5000x5000 (400, over --max-pixels), and now and then a single
   4000x4000 photo within the limits (200): each expectation follows from the limits given;
4. clients that hang up mid-request: after the headers, after half the body, or after the whole
   body but before the answer (half of them with a TCP reset rather than a clean close);
5. slow uploads: a photo sent in small pieces over a few seconds (expected: 200);
6. half-open connections: nothing sent, part of a request line, or headers without their body,
   held open for a few seconds, at most --half-open at once;
7. the unified model's category without thresholds of its own (``?category=NAME``; expected: 200
   decided with the model's threshold).

Every second it samples the server's memory (VmRSS in /proc/PID/status) and ``GET /v1/ready``.
At the end it prints, and writes as JSON (--output): the requests by client kind and outcome (HTTP
status, "no answer" or "connection error"), p50/p99 latency of the good requests, the server's
memory (after warm-up, peak, final, VmHWM, slope after warm-up, first and last window's median),
whether the server is alive and ready, and whether one fixed photo, posted alone before and after
the load, kept its score (to 1e-6).

Exit status: 0 when everything held; 1 when a good request got no answer or anything but a correct
200, any request got a 5xx, a misbehaving request got an answer other than the expected one, the
server died or was not ready at the end, or the fixed photo's score changed; 2 when the server
could not be set up (training failed, the server never got ready).

Without --checkpoint it first trains a tiny unified model (seconds on a CPU) on generated
synthetic data in which the category 'washer' has only 4 training images: 1 is held out, too few
for thresholds of its own, so ``?category=washer`` must fall back to the model's threshold.

    python benchmarks/soak_serve.py --minutes 1                     # the quick mode
    python benchmarks/soak_serve.py                                 # 10 minutes
    python benchmarks/soak_serve.py --checkpoint runs/x/checkpoint.pt --output runs/soak_x.json

Only 127.0.0.1 is contacted; Linux only (memory comes from /proc). The server's own log goes next
to the JSON file (``<output>.server.log``).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import math
import os
import random
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # the only address this script ever talks to
NO_ANSWER = "no answer"  # the request went out, no HTTP answer came back (timeout, closed, reset)
CONNECTION_ERROR = "connection error"  # could not connect, or the connection broke while sending
HUNG_UP = "hung up"  # a hang-up client closed the connection as it meant to
BARE_CATEGORY_NOTE = "no calibration of its own"  # how the model says a category uses its threshold

#: client kinds, in the order they are printed, with what each one does
KINDS = {
    "good_raw": "good: raw PNG/JPEG body",
    "good_multipart": "good: multipart, 1-3 photos",
    "good_category": "good: ?category without own thresholds",
    "slow_upload": "good: slow upload",
    "bad_random": "bad bytes: random",
    "bad_truncated": "bad bytes: truncated PNG",
    "bad_empty": "bad bytes: empty body",
    "bad_multipart": "bad bytes: multipart noise part",
    "bomb_many": "decompression: 16 x 4000x4000 PNG",
    "bomb_huge": "decompression: 5000x5000 PNG",
    "heavy_ok": "decompression: 4000x4000 in limits",
    "hangup_headers": "hang-up: after the headers",
    "hangup_half_body": "hang-up: after half the body",
    "hangup_before_answer": "hang-up: before the answer",
    "half_open_silent": "half-open: nothing sent",
    "half_open_partial_line": "half-open: part of a request line",
    "half_open_no_body": "half-open: headers, no body",
}
#: kinds whose every request must be answered 200 (a well-behaved client's photo)
GOOD_KINDS = ("good_raw", "good_multipart", "good_category", "slow_upload")
#: kinds whose latency is the service's latency (slow uploads are slow on purpose)
LATENCY_KINDS = ("good_raw", "good_multipart", "good_category")


class SetupError(RuntimeError):
    """The soak could not start: no checkpoint, or a server that never got ready."""


# -- server limits -------------------------------------------------------------------------------------
@dataclass
class Limits:
    """The ``minimaxad serve`` options the soak runs the server with."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_request_mb: float = 20.0
    max_pixels: int = 16_000_000
    max_request_pixels: int = 20_000_000
    max_decoded_pixels: int = 20_000_000
    max_connections: int = 32
    workers_threads: int = 2

    @property
    def max_queue(self) -> int:
        """The queue ``serve`` derives when --max-queue is not given (more images per request: 413)."""
        return max(64, 4 * self.max_batch)

    def options(self) -> list[str]:
        """The command-line options for ``minimaxad serve``."""
        out: list[str] = []
        for name, value in vars(self).items():
            out += ["--" + name.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
        return out

    def expected_status(self, pixels: list[int]) -> int:
        """What the server answers a request of valid images with these pixel counts, in the order it
        checks them: too many images 413, one image over --max-pixels 400, all over
        --max-request-pixels 413, else 200."""
        if len(pixels) > self.max_queue:
            return 413
        if max(pixels) > self.max_pixels:
            return 400
        if sum(pixels) > self.max_request_pixels:
            return 413
        return 200


# -- request bodies ------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """``image`` as the bytes of a file of format ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def multipart(files: list[bytes], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of ``image`` parts (and text fields) and its Content-Type."""
    boundary = "soak-" + os.urandom(8).hex()
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for index, data in enumerate(files):
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{index}.png"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Photos:
    """What the clients send: photos of the synthetic scenes and decompression-heavy PNGs."""

    small: list[bytes]  # the synthetic test images (PNG)
    large: list[bytes]  # 1500x1000 PNGs
    jpeg: bytes  # a 1500x1000 JPEG
    fixed: bytes  # the photo whose score must not change
    bare_category: list[bytes]  # photos of the category without thresholds
    bomb_4000: bytes  # 4000x4000 of one colour: ~50 KB that decode to 48 MB
    bomb_5000: bytes  # 5000x5000 of one colour

    @property
    def good(self) -> list[bytes]:
        """Every well-formed photo."""
        return self.small + self.large + [self.jpeg]


def make_photos(data_root: Path, bare_category: str | None) -> Photos:
    """The clients' photos, from the synthetic dataset at ``data_root`` (its test images) and
    1500x1000 renders of the same scenes."""
    from minimaxad.data.synthetic import render_sample

    small = [path.read_bytes() for path in sorted(data_root.glob("*/test/*/*.png"))]
    if not small:
        raise SetupError(f"no test images under {data_root}")
    large_images = []
    for index, category in enumerate(("weave", "washer")):
        pixels, _ = render_sample(category, seed=11, index=index, image_size=500, split="test")
        large_images.append(Image.fromarray(pixels).resize((1500, 1000), Image.BICUBIC))
    bare = sorted((data_root / bare_category).glob("test/*/*.png")) if bare_category else []
    fixed = sorted(data_root.glob("*/test/good/*.png"))[0].read_bytes()
    return Photos(
        small=small,
        large=[encode(image) for image in large_images],
        jpeg=encode(large_images[0], "JPEG", quality=90),
        fixed=fixed,
        bare_category=[path.read_bytes() for path in bare],
        bomb_4000=encode(Image.new("RGB", (4000, 4000), (200, 120, 40))),
        bomb_5000=encode(Image.new("L", (5000, 5000), 90)),
    )


# -- the checkpoint --------------------------------------------------------------------------------------
def make_dataset(root: Path) -> Path:
    """The synthetic MVTec tree of the tests (weave and washer, 64 px) with washer cut to 4
    training images, so that calibration holds out 1 of them: too few for its own thresholds."""
    from minimaxad.data import generate_synthetic_dataset

    generate_synthetic_dataset(
        root, categories=("weave", "washer"), n_train=12, n_test_good=4, n_test_defect=1, image_size=64, seed=3
    )
    for extra in sorted((root / "washer" / "train" / "good").iterdir())[4:]:
        extra.unlink()
    return root


def train_checkpoint(data_root: Path, out: Path, timeout_s: float) -> Path:
    """Train the tiny unified model of the tests' ``trained_checkpoint`` on ``data_root`` (a child
    process, so that this one stays light); its ``checkpoint.pt``."""
    command = [sys.executable, "-m", "minimaxad.cli", "fit", "--data", str(data_root), "--unified"]
    command += ["--output", str(out), "--backbone", "unireplknet_micro", "--encoder-weights", "none"]
    command += ["--image-size", "64", "--batch-size", "4", "--max-steps", "6", "--val-fraction", "0.25", "--quiet"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=out.parent)
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"training the soak's model took over {timeout_s:.0f} s") from exc
    if done.returncode != 0 or not (out / "checkpoint.pt").is_file():
        raise SetupError(f"training the soak's model failed ({done.returncode}): {done.stderr[-2000:]}")
    return out / "checkpoint.pt"


# -- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_command(checkpoint: Path, port: int, limits: Limits) -> list[str]:
    """The ``minimaxad serve`` command line the soak runs."""
    command = [sys.executable, "-m", "minimaxad.cli", "serve", "--checkpoint", str(checkpoint)]
    return command + ["--host", HOST, "--port", str(port), *limits.options(), "--log-level", "warning"]


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until ``GET /v1/ready`` answered 200; :class:`SetupError` if the server exits or
    is not ready within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise SetupError(f"the server exited with status {process.returncode} before it was ready")
        if one_shot(port, "GET", "/v1/ready", timeout=5).status == 200:
            return time.monotonic() - started
        time.sleep(0.25)
    raise SetupError(f"the server was not ready after {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen, timeout_s: float = 45.0) -> dict[str, Any]:
    """SIGTERM (in-flight requests are answered, then it exits), SIGKILL past ``timeout_s``; how it went."""
    if process.poll() is not None:
        return {"exit_code": process.returncode, "seconds": 0.0, "killed": False, "was_running": False}
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    killed = False
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        killed = True
    return {
        "exit_code": process.returncode,
        "seconds": time.monotonic() - started,
        "killed": killed,
        "was_running": True,
    }


def memory_mb(pid: int, field_name: str = "VmRSS") -> float | None:
    """A memory figure of process ``pid`` from /proc/PID/status in MB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


# -- HTTP ------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """What came back for one request: ``outcome`` is the HTTP status as text, or NO_ANSWER or
    CONNECTION_ERROR (with ``error``)."""

    outcome: str
    status: int | None = None
    body: bytes = b""
    seconds: float = 0.0
    error: str = ""

    def json(self) -> Any:
        """The body as JSON, None if it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def send(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers=None) -> Answer:
    """One request on ``conn`` (reused while the server keeps it open; closed after a failure so that
    the next request reconnects). Every socket operation has the connection's timeout."""
    started = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return Answer(CONNECTION_ERROR, seconds=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    try:
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:  # timed out, closed or reset without an answer
        conn.close()
        return Answer(NO_ANSWER, seconds=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    return Answer(str(response.status), response.status, data, time.perf_counter() - started)


def one_shot(port: int, method: str, path: str, body: bytes | None = None, headers=None, timeout=10.0) -> Answer:
    """One request on a connection of its own."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        return send(conn, method, path, body, headers)
    finally:
        conn.close()


class KeepAlive:
    """A client's keep-alive connection, reopened before a request when it sat idle long enough that
    the server may be closing it (uvicorn does after 5 s): a request racing that close would be lost
    through no fault of the server (HTTP libraries retry such requests for the same reason)."""

    IDLE_S = 2.0

    def __init__(self, port: int, timeout: float) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.last = time.monotonic()

    def send(self, method: str, path: str, body: bytes | None = None, headers=None) -> Answer:
        """:func:`send` on this connection."""
        if time.monotonic() - self.last > self.IDLE_S:
            self.conn.close()  # the next request opens a new one
        answer = send(self.conn, method, path, body, headers)
        self.last = time.monotonic()
        return answer

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def raw_headers(port: int, length: int, content_type: str = "image/png") -> bytes:
    """The head of a ``POST /v1/predict`` of ``length`` body bytes, for raw-socket clients."""
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def close_abruptly(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a clean FIN, as a crashed client or a pulled cable does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the soak's shared state -------------------------------------------------------------------------
@dataclass
class Record:
    """Outcomes by kind, latencies of good answers, and examples of what went wrong (thread-safe)."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: Counter = field(default_factory=Counter)  # kind -> requests answered other than expected
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first few of them, with details
    fixed_scores: list[float] = field(default_factory=list)  # the fixed photo's scores under load
    half_open_held_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, outcome: str, expected: bool, seconds: float | None = None, detail: str = "") -> None:
        """Count one request of ``kind``; ``expected``: its outcome is what that kind must get."""
        with self.lock:
            self.counts[kind][outcome] += 1
            if seconds is not None and expected:
                self.latencies[kind].append(seconds)
            if not expected:
                self.unexpected[kind] += 1
                if len(self.examples) < 40:  # enough to diagnose, bounded for a long run
                    self.examples.append({"kind": kind, "outcome": outcome, "at": time.time(), "detail": detail[:300]})


@dataclass
class Soak:
    """What every client thread shares: where the server is, until when to run, what to send."""

    port: int
    deadline: float  # time.monotonic() at which the load stops
    limits: Limits
    photos: Photos
    record: Record
    request_timeout: float
    bare_category: str | None
    model_threshold: float | None
    own_categories: list[str]  # categories with thresholds of their own
    stop: threading.Event = field(default_factory=threading.Event)

    def rounds(self, cap: int) -> Iterator[int]:
        """0, 1, 2, ... while the load runs: until the deadline, a stop, or ``cap`` rounds."""
        for index in range(cap):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return
            yield index

    def pause(self, seconds: float) -> None:
        """Sleep, but wake up when the load stops."""
        self.stop.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw TCP connection to the server."""
        return socket.create_connection((HOST, self.port), timeout=timeout)


def good_answer(answer: Answer, images: int, wanted: bool) -> str:
    """'' if a 200 answer is a whole answer (one finite score per image, pictures when asked), else why not."""
    body = answer.json()
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != images:
        return f"expected {images} results, got {answer.body[:200]!r}"
    for result in results:
        if not isinstance(result.get("score"), (int, float)) or not math.isfinite(result["score"]):
            return f"no finite score in {str(result)[:200]}"
        if wanted and not (result.get("heatmap_png") and result.get("mask_png")):
            return "return=heatmap,mask answered without both pictures"
    return ""


def record_good(soak: Soak, kind: str, answer: Answer, images: int, wanted: bool, check=None) -> Any:
    """Count a good client's request (200 with a whole answer, else unexpected); its JSON body."""
    if answer.status != 200:
        detail = answer.error or answer.body[:300].decode("utf-8", "replace")
        soak.record.add(kind, answer.outcome, False, detail=detail)
        return None
    problem = good_answer(answer, images, wanted) or (check(answer.json()) if check else "")
    soak.record.add(kind, "200" if not problem else "200 wrong answer", not problem, answer.seconds, problem)
    return answer.json()


# -- the clients -------------------------------------------------------------------------------------------
def good_raw_client(soak: Soak, rng: random.Random) -> None:
    """Photos as raw bodies on one keep-alive connection: mostly the small test images, some large
    PNGs and a JPEG, now and then the fixed photo; a quarter with heatmap and mask."""
    photos = soak.photos
    conn = KeepAlive(soak.port, soak.request_timeout)
    try:
        for _ in soak.rounds(cap=100_000):
            draw = rng.random()
            body, content_type = rng.choice(photos.small), "image/png"
            if draw < 0.15:
                body = rng.choice(photos.large)
            elif draw < 0.22:
                body, content_type = photos.jpeg, "image/jpeg"
            elif draw < 0.35:
                body = photos.fixed
            wanted = rng.random() < 0.25
            path = "/v1/predict" + ("?return=heatmap,mask" if wanted else "")
            answer = conn.send("POST", path, body, {"Content-Type": content_type})
            result = record_good(soak, "good_raw", answer, 1, wanted)
            if result and body is photos.fixed:
                with soak.record.lock:
                    soak.record.fixed_scores.append(result["results"][0]["score"])
            soak.pause(rng.uniform(0.05, 0.4))  # a camera's rhythm, and room for the other clients
    finally:
        conn.close()


def good_multipart_client(soak: Soak, rng: random.Random) -> None:
    """Multipart uploads of 1-3 photos, sometimes with a category field of a category that has its
    own thresholds, a quarter with heatmap and mask (as a query parameter or a form field)."""
    photos = soak.photos
    conn = KeepAlive(soak.port, soak.request_timeout)
    try:
        for _ in soak.rounds(cap=100_000):
            files = [rng.choice(photos.small) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.2:
                files[0] = rng.choice(photos.large)
            fields: dict[str, str] = {}
            if soak.own_categories and rng.random() < 0.3:
                fields["category"] = rng.choice(soak.own_categories)
            wanted, path = rng.random() < 0.25, "/v1/predict"
            if wanted:
                if rng.random() < 0.5:
                    path += "?return=heatmap,mask"
                else:
                    fields["return"] = "heatmap,mask"
            body, content_type = multipart(files, fields)
            answer = conn.send("POST", path, body, {"Content-Type": content_type})
            record_good(soak, "good_multipart", answer, len(files), wanted)
            soak.pause(rng.uniform(0.1, 0.5))
    finally:
        conn.close()


def bare_category_client(soak: Soak, rng: random.Random) -> None:
    """Photos of the category without thresholds of its own, as ``?category=NAME``: each answer must
    be decided with the model's threshold and say so."""
    photos, name = soak.photos.bare_category or soak.photos.small, soak.bare_category

    def decided_by_the_model(body: dict[str, Any]) -> str:
        for result in body["results"]:
            threshold, source = result.get("threshold"), str(result.get("threshold_source"))
            if soak.model_threshold is not None and (
                threshold is None or not math.isclose(threshold, soak.model_threshold, rel_tol=1e-9, abs_tol=1e-12)
            ):
                return f"threshold {threshold}, not the model's {soak.model_threshold}"
            if BARE_CATEGORY_NOTE not in source:
                return f"threshold_source {source[:150]!r} does not say the model's threshold is used"
            if result.get("category") != name:
                return f"category {result.get('category')!r} in the answer, not {name!r}"
        return ""

    conn = KeepAlive(soak.port, soak.request_timeout)
    try:
        for _ in soak.rounds(cap=100_000):
            wanted = rng.random() < 0.2
            path = f"/v1/predict?category={name}" + ("&return=heatmap,mask" if wanted else "")
            answer = conn.send("POST", path, rng.choice(photos), {"Content-Type": "image/png"})
            record_good(soak, "good_category", answer, 1, wanted, decided_by_the_model)
            soak.pause(rng.uniform(0.2, 0.6))
    finally:
        conn.close()


def bad_bytes_client(soak: Soak, rng: random.Random) -> None:
    """Uploads that are no photo: each must be refused with 400 and the reason."""
    photos = soak.photos
    for _ in soak.rounds(cap=100_000):
        kind = rng.choice(("bad_random", "bad_truncated", "bad_empty", "bad_multipart"))
        headers = {"Content-Type": rng.choice(("image/png", "application/octet-stream"))}
        if kind == "bad_random":
            body = rng.randbytes(rng.randint(1, 64 * 1024))
        elif kind == "bad_truncated":  # a valid header, pixel data cut off
            whole = rng.choice(photos.small + photos.large[:1])
            body = whole[: len(whole) // 2]
        elif kind == "bad_empty":
            body = b""
        else:
            body, headers["Content-Type"] = multipart([rng.randbytes(2048)])
        answer = one_shot(soak.port, "POST", "/v1/predict", body, headers, soak.request_timeout)
        soak.record.add(
            kind,
            answer.outcome,
            answer.status == 400,
            detail=answer.error or answer.body[:300].decode("utf-8", "replace"),
        )
        soak.pause(rng.uniform(0.2, 0.6))


def decompression_client(soak: Soak, rng: random.Random) -> None:
    """Small bodies that decode to huge images: refused from their headers (413 over
    --max-request-pixels, 400 over --max-pixels); now and then a single 4000x4000 photo that fits
    the limits and must be scored (it exercises the decoded-pixel budget)."""
    photos, limits = soak.photos, soak.limits
    many, many_type = multipart([photos.bomb_4000] * 16)  # ~0.8 MB that decode to 768 MB
    for index in soak.rounds(cap=100_000):
        if index % 6 == 5:
            kind, body, content_type, pixels = "heavy_ok", photos.bomb_4000, "image/png", [4000 * 4000]
        elif index % 2 == 0:
            kind, body, content_type, pixels = "bomb_many", many, many_type, [4000 * 4000] * 16
        else:
            kind, body, content_type, pixels = "bomb_huge", photos.bomb_5000, "image/png", [5000 * 5000]
        expected = limits.expected_status(pixels)
        answer = one_shot(soak.port, "POST", "/v1/predict", body, {"Content-Type": content_type}, soak.request_timeout)
        if expected == 200:
            record_good(soak, kind, answer, 1, False)
        else:
            detail = answer.error or answer.body[:300].decode("utf-8", "replace")
            soak.record.add(kind, answer.outcome, answer.status == expected, detail=f"expected {expected}: {detail}")
        soak.pause(rng.uniform(0.5, 1.5))


def hangup_client(soak: Soak, rng: random.Random) -> None:
    """Clients that go away mid-request: after the headers, after half the body, or after the whole
    body while the photo is being scored; half of them reset the connection instead of closing it."""
    for _ in soak.rounds(cap=100_000):
        kind = rng.choice(("hangup_headers", "hangup_half_body", "hangup_before_answer"))
        body = rng.choice(soak.photos.small + soak.photos.large)
        try:
            sock = soak.connect()
        except OSError as exc:
            soak.record.add(kind, CONNECTION_ERROR, False, detail=str(exc))
            continue
        outcome, ok, detail = HUNG_UP, True, ""
        try:
            sock.sendall(raw_headers(soak.port, len(body)))
            if kind == "hangup_half_body":
                sock.sendall(body[: len(body) // 2])
            elif kind == "hangup_before_answer":
                sock.sendall(body)
            time.sleep(rng.uniform(0.0, 0.15))  # let the server get into the request
        except OSError as exc:
            outcome, ok, detail = CONNECTION_ERROR, False, str(exc)
        finally:
            reset = rng.random() < 0.5
            if reset:
                close_abruptly(sock)
            else:
                sock.close()
        soak.record.add(kind, f"{outcome} ({'reset' if reset else 'closed'})" if ok else outcome, ok, detail=detail)
        soak.pause(rng.uniform(0.2, 0.6))


def slow_upload_client(soak: Soak, rng: random.Random, seconds: float) -> None:
    """Photos sent in 20 pieces over about ``seconds`` (a congested link): each must get 200."""
    for _ in soak.rounds(cap=100_000):
        body = rng.choice(soak.photos.small) if rng.random() < 0.7 else rng.choice(soak.photos.large)
        pieces = 20
        step = -(-len(body) // pieces)
        started = time.perf_counter()
        try:
            sock = soak.connect(timeout=soak.request_timeout)
        except OSError as exc:
            soak.record.add("slow_upload", CONNECTION_ERROR, False, detail=str(exc))
            continue
        try:
            sock.sendall(raw_headers(soak.port, len(body)))
            for offset in range(0, len(body), step):
                sock.sendall(body[offset : offset + step])
                time.sleep(seconds / pieces)
        except OSError as exc:
            sock.close()
            soak.record.add("slow_upload", CONNECTION_ERROR, False, detail=str(exc))
            continue
        try:
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            answer = Answer(str(response.status), response.status, response.read(), time.perf_counter() - started)
        except (OSError, http.client.HTTPException) as exc:
            answer = Answer(NO_ANSWER, error=f"{type(exc).__name__}: {exc}")
        finally:
            sock.close()
        record_good(soak, "slow_upload", answer, 1, False)
        soak.pause(rng.uniform(0.2, 1.0))


def half_open_client(soak: Soak, rng: random.Random, hold: tuple[float, float]) -> None:
    """One connection at a time that sends nothing, part of a request line, or headers without their
    body, and stays open for ``hold`` seconds (uniform; never past the deadline) unless the server
    closes it first. Each such thread holds at most one connection: their number is the cap."""
    for _ in soak.rounds(cap=100_000):
        kind = rng.choice(("half_open_silent", "half_open_partial_line", "half_open_no_body"))
        try:
            sock = soak.connect()
        except OSError as exc:
            soak.record.add(kind, CONNECTION_ERROR, False, detail=str(exc))
            soak.pause(1.0)
            continue
        started, outcome = time.monotonic(), "held, closed by us"
        try:
            if kind == "half_open_partial_line":
                sock.sendall(b"POST /v1/pre")
            elif kind == "half_open_no_body":
                sock.sendall(raw_headers(soak.port, 50_000))
            sock.settimeout(0.5)  # wake up twice a second to notice the deadline
            until = min(started + rng.uniform(*hold), soak.deadline)
            while time.monotonic() < until and not soak.stop.is_set():
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                outcome = "closed by server" if not data else f"answered {data[9:12].decode('ascii', 'replace')}"
                break
        except OSError as exc:
            outcome = f"{CONNECTION_ERROR} ({type(exc).__name__})"
        finally:
            sock.close()
        held = time.monotonic() - started
        with soak.record.lock:
            soak.record.half_open_held_s.append(held)
        soak.record.add(kind, outcome, not outcome.startswith(CONNECTION_ERROR))
        soak.pause(rng.uniform(0.1, 0.5))


def sampler(soak: Soak, process: subprocess.Popen, started: float, samples: list[dict[str, Any]]) -> None:
    """Once a second: the server's VmRSS and ``GET /v1/ready``; stops the load if the server dies."""
    for _ in soak.rounds(cap=int(soak.deadline - started) + 60):
        tick = time.monotonic()
        rss = memory_mb(process.pid)
        ready = one_shot(soak.port, "GET", "/v1/ready", timeout=5)
        samples.append(
            {"t": round(tick - started, 2), "rss_mb": rss, "ready": ready.outcome, "ready_ms": 1e3 * ready.seconds}
        )
        if process.poll() is not None:
            soak.stop.set()  # nothing left to soak
            return
        soak.pause(1.0 - (time.monotonic() - tick))


# -- figures -------------------------------------------------------------------------------------------
def percentile_ms(seconds: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``seconds`` in milliseconds (None without any)."""
    return float(np.percentile(1e3 * np.asarray(seconds), q)) if seconds else None


def memory_figures(samples: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """Memory over the run from the 1-second samples: the warm-up is the first min(60 s, a quarter
    of the run); after it, the RSS (median of its first 5 s), the slope (least squares, MB per
    minute), and the medians of the first and last windows (min(60 s, a quarter) each)."""
    points = [(s["t"], s["rss_mb"]) for s in samples if s.get("rss_mb") is not None]
    warmup = window = min(60.0, duration_s / 4)
    out: dict[str, Any] = {"warmup_s": warmup, "window_s": window, "samples": len(points)}
    if not points:
        return out
    after = [(t, m) for t, m in points if t >= warmup] or points
    out["after_warmup_mb"] = float(np.median([m for t, m in after if t < after[0][0] + 5]))
    out["peak_sampled_mb"] = max(m for _, m in points)
    if len(after) >= 3 and after[-1][0] > after[0][0]:
        slope = np.polyfit([t for t, _ in after], [m for _, m in after], 1)[0]
        out["slope_mb_per_min"] = float(60 * slope)
    first = [m for t, m in points if t < window]
    last = [m for t, m in points if t >= points[-1][0] - window]
    out["first_window_median_mb"] = float(np.median(first)) if first else None
    out["last_window_median_mb"] = float(np.median(last))
    if first:
        out["last_minus_first_window_mb"] = out["last_window_median_mb"] - out["first_window_median_mb"]
    return out


def prometheus_counts(text: str, name: str) -> dict[str, float]:
    """The samples of one counter in a Prometheus exposition, by their labels."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def summarize(record: Record) -> dict[str, Any]:
    """Counts by kind and outcome, and latency of the good requests."""
    good = [s for kind in LATENCY_KINDS for s in record.latencies.get(kind, [])]
    latency = {"all good": {"n": len(good), "p50_ms": percentile_ms(good, 50), "p99_ms": percentile_ms(good, 99)}}
    for kind in (*LATENCY_KINDS, "slow_upload", "heavy_ok"):
        values = record.latencies.get(kind, [])
        latency[kind] = {"n": len(values), "p50_ms": percentile_ms(values, 50), "p99_ms": percentile_ms(values, 99)}
    held = record.half_open_held_s
    return {
        "requests": {kind: dict(record.counts[kind]) for kind in KINDS if kind in record.counts},
        "unexpected": dict(record.unexpected),
        "unexpected_examples": record.examples,
        "latency": latency,
        "half_open_held_s": {
            "n": len(held),
            "max": max(held, default=0.0),
            "mean": float(np.mean(held)) if held else 0,
        },
    }


def print_summary(report: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    """The figures, readable."""
    echo("")
    echo(f"soak_serve: {report['date']}")
    echo(f"command: {report['command']}")
    echo(f"server:  {report['server_command']}")
    echo(
        f"load: {report['load_seconds']:.0f} s (planned {report['planned_seconds']:.0f} s), "
        f"{sum(sum(c.values()) for c in report['requests'].values())} requests; {report['machine']}"
    )
    echo("")
    echo(f"{'client kind':<40} {'requests':>8}  outcomes")
    for kind, outcomes in report["requests"].items():
        text = ", ".join(f"{o}: {n}" for o, n in sorted(outcomes.items()))
        flag = f"   <-- {report['unexpected'][kind]} unexpected" if report["unexpected"].get(kind) else ""
        echo(f"{KINDS[kind]:<40} {sum(outcomes.values()):>8}  {text}{flag}")
    echo("")
    echo("latency of good answers (ms):")
    for kind, figures in report["latency"].items():
        if figures["n"]:
            name = "all good (raw, multipart, category)" if kind == "all good" else KINDS[kind]
            echo(f"  {name:<38} n={figures['n']:<5} p50 {figures['p50_ms']:8.1f}   p99 {figures['p99_ms']:8.1f}")
    memory = report["memory"]

    def mb(key: str) -> str:
        return "n/a" if memory.get(key) is None else f"{memory[key]:.1f} MB"

    echo("")
    echo(f"server memory (RSS; warm-up = first {memory['warmup_s']:.0f} s, {memory['samples']} samples):")
    echo(
        f"  after warm-up {mb('after_warmup_mb')}, peak sampled {mb('peak_sampled_mb')}, VmHWM {mb('vmhwm_mb')}, "
        f"final {mb('final_mb')}"
    )
    slope = memory.get("slope_mb_per_min")
    echo(
        f"  slope after warm-up {'n/a' if slope is None else f'{slope:+.2f} MB/min'}; median of the first "
        f"{memory['window_s']:.0f} s {mb('first_window_median_mb')}, of the last {memory['window_s']:.0f} s "
        f"{mb('last_window_median_mb')} ({memory.get('last_minus_first_window_mb', float('nan')):+.1f} MB)"
    )
    ready = report["readiness"]
    echo(
        f"readiness during the load: {ready['ready']}/{ready['samples']} samples 200, slowest answer "
        f"{ready['slowest_ms']:.0f} ms; not ready: {ready['not_ready'] or 'none'}"
    )
    held = report["half_open_held_s"]
    echo(f"half-open connections: {held['n']}, held {held['mean']:.1f} s on average, at most {held['max']:.1f} s")
    end = report["end"]
    echo(
        f"at the end: server alive {end['alive']}, /v1/ready {end['ready_status']}, "
        f"stopped with SIGTERM: exit status {end['shutdown'].get('exit_code')}"
        f"{' (the signal, re-raised by uvicorn after its graceful shutdown)' if end['shutdown'].get('exit_code') == -signal.SIGTERM else ''}"
        f" in {end['shutdown'].get('seconds', 0):.1f} s{' (killed after the timeout)' if end['shutdown'].get('killed') else ''}"
    )
    score = report["score"]
    echo(
        f"fixed photo: score at start {score['start']}, at end {score['end']}, |difference| "
        f"{score['difference']} (<= {score['tolerance']:g}: {score['unchanged']}); under load "
        f"{score['under_load_n']} times, largest |difference| from the start {score['under_load_max_difference']}"
    )
    if report.get("server_errors"):
        echo(f"server's error counts (/metrics): {report['server_errors']}")
    for example in report["unexpected_examples"][:10]:
        echo(f"  unexpected: {KINDS.get(example['kind'], example['kind'])}: {example['outcome']}: {example['detail']}")
    echo("")
    echo("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (1 for the quick mode)")
    parser.add_argument("--checkpoint", help="the model to serve (default: train a tiny one on synthetic data)")
    parser.add_argument("--output", default="runs/soak_serve.json", help="JSON file for the figures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' choices")
    parser.add_argument("--good-clients", type=int, default=3, help="threads posting raw photos")
    parser.add_argument("--multipart-clients", type=int, default=2, help="threads posting multipart uploads")
    parser.add_argument("--slow-clients", type=int, default=1, help="threads uploading slowly")
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="time a slow upload takes")
    parser.add_argument("--half-open", type=int, default=4, help="half-open connections held at once (at most)")
    parser.add_argument("--hold-seconds", type=float, nargs=2, default=(2.0, 15.0), help="a half-open one's hold")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may take")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds the server may take to start")
    defaults = Limits()
    limits = parser.add_argument_group("server limits (minimaxad serve options)")
    for name, value in vars(defaults).items():
        limits.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    if min(args.good_clients, args.multipart_clients, args.slow_clients, args.half_open) < 0:
        parser.error("client counts must be >= 0")
    # Every open connection counts towards --max-connections (uvicorn answers 503 beyond): keep the
    # soak's own connections, plus the sampler and room for closing ones, under it.
    connections = args.good_clients + args.multipart_clients + args.slow_clients + args.half_open + 4 + 1
    if connections + 4 > args.max_connections:
        parser.error(
            f"{connections} connections open at once (+4 spare) exceed --max-connections {args.max_connections}: "
            f"the server would rightly answer 503; use fewer clients or --half-open"
        )
    return args


def start_clients(soak: Soak, args: argparse.Namespace) -> list[threading.Thread]:
    """One thread per client, each with its own random stream (from --seed); started."""
    plan: list[tuple[str, Callable[..., None], tuple]] = []
    plan += [(f"good-{i}", good_raw_client, ()) for i in range(args.good_clients)]
    plan += [(f"multipart-{i}", good_multipart_client, ()) for i in range(args.multipart_clients)]
    plan += [(f"slow-{i}", slow_upload_client, (args.slow_seconds,)) for i in range(args.slow_clients)]
    plan += [(f"half-open-{i}", half_open_client, (tuple(args.hold_seconds),)) for i in range(args.half_open)]
    plan += [("bad-bytes", bad_bytes_client, ()), ("decompression", decompression_client, ())]
    plan += [("hang-up", hangup_client, ())]
    if soak.bare_category:
        plan.append(("category", bare_category_client, ()))
    threads = []
    for name, target, extra in plan:
        rng = random.Random(f"{args.seed}-{name}")
        # daemon: a thread stuck past its join timeout must not keep this process alive
        threads.append(threading.Thread(target=target, args=(soak, rng, *extra), name=name, daemon=True))
        threads[-1].start()
    return threads


def describe_model(port: int) -> tuple[float | None, str | None, list[str]]:
    """From ``GET /v1/model``: the model's image threshold, a category without thresholds of its own
    (None if all have theirs), and the categories with their own."""
    answer = one_shot(port, "GET", "/v1/model", timeout=30)
    info = answer.json() if answer.status == 200 else None
    if not isinstance(info, dict):
        raise SetupError(f"GET /v1/model answered {answer.outcome}: {answer.body[:200]!r}")
    model_threshold = (info.get("thresholds") or {}).get("image", {}).get("value")
    bare, own = None, []
    for category, rule in (info.get("category_thresholds") or {}).items():
        if BARE_CATEGORY_NOTE in str(rule.get("image", {}).get("note")):
            bare = bare or category
        else:
            own.append(category)
    return model_threshold, bare, own


def fixed_score(port: int, photos: Photos, timeout: float) -> tuple[float | None, str]:
    """The fixed photo's score, posted alone (a batch of one, as at the start), and any problem."""
    answer = one_shot(port, "POST", "/v1/predict", photos.fixed, {"Content-Type": "image/png"}, timeout)
    if answer.status != 200 or good_answer(answer, 1, False):
        return None, f"{answer.outcome}: {answer.error or answer.body[:200]!r}"
    return float(answer.json()["results"][0]["score"]), ""


def load(soak: Soak, args: argparse.Namespace, process: subprocess.Popen) -> dict[str, Any]:
    """The clients and the sampler until the deadline (or the server's death), all joined: the
    memory and readiness samples, threads that would not stop, and how long it lasted."""
    started, samples = time.monotonic(), []
    watcher = threading.Thread(target=sampler, args=(soak, process, started, samples), name="sampler", daemon=True)
    watcher.start()
    threads = [watcher, *start_clients(soak, args)]
    try:
        soak.stop.wait(soak.deadline - started)
    finally:  # also on Ctrl-C: every loop ends at its next round
        soak.stop.set()
    join_by = time.monotonic() + soak.request_timeout + 30  # the longest a request in flight can still take
    stuck = []
    for thread in threads:
        thread.join(max(0.0, join_by - time.monotonic()))
        if thread.is_alive():
            stuck.append(thread.name)
    return {"samples": samples, "stuck": stuck, "seconds": time.monotonic() - started}


def verdict(record: Record, end: dict[str, Any], score: dict[str, Any]) -> list[str]:
    """What went wrong (nothing: the soak passed)."""
    failures = []
    for kind in GOOD_KINDS:
        if record.unexpected.get(kind):
            failures.append(f"{record.unexpected[kind]} good request(s) of '{KINDS[kind]}' not answered 200 in full")
    for kind, count in record.unexpected.items():
        if kind not in GOOD_KINDS:
            failures.append(f"{count} request(s) of '{KINDS[kind]}' answered other than expected")
    fives = sum(n for outcomes in record.counts.values() for o, n in outcomes.items() if o.startswith("5"))
    if fives:
        failures.append(f"{fives} answer(s) 5xx")
    if not end["alive"]:
        failures.append(f"the server died (exit status {end['shutdown']['exit_code']})")
    if end["ready_status"] != "200":
        failures.append(f"the server was not ready at the end ({end['ready_status']} {end['ready_body']})")
    if not score["unchanged"]:
        failures.append(f"the fixed photo's score changed: {score['start']} -> {score['end']} {score['problem']}")
    if end["stuck_threads"]:
        failures.append(f"client thread(s) still running after the join timeout: {', '.join(end['stuck_threads'])}")
    if not any(record.counts.get(kind) for kind in LATENCY_KINDS):
        failures.append("no good request was made")
    return failures


def run(args: argparse.Namespace, command: str, date: str) -> dict[str, Any]:
    """Set up (data, model, server), soak, check the end state, stop the server; the report.
    :class:`SetupError` when the server cannot be set up."""
    limits = Limits(**{name: getattr(args, name) for name in vars(Limits())})
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    log_path = output.with_name(output.stem + ".server.log")
    duration = 60.0 * args.minutes
    with tempfile.TemporaryDirectory(prefix="minimaxad-soak-") as tmp:
        work = Path(tmp)
        data_root = make_dataset(work / "data")
        if args.checkpoint:
            checkpoint = Path(args.checkpoint).resolve()
        else:
            print("soak_serve: training the tiny model on synthetic data ...", flush=True)
            checkpoint = train_checkpoint(data_root, work / "run", timeout_s=900)
        port = free_port()
        server_cmd = server_command(checkpoint, port, limits)
        print(f"soak_serve: starting {shlex.join(server_cmd)}", flush=True)
        with open(log_path, "w") as log:  # a file, not a pipe: a pipe nobody reads could block the server
            process = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:
            try:
                startup_s = wait_ready(port, process, args.ready_timeout)
                model_threshold, bare, own = describe_model(port)
                photos = make_photos(data_root, bare)
                start_score, problem = fixed_score(port, photos, args.request_timeout)
                if start_score is None:
                    raise SetupError(f"the fixed photo could not be scored before the load: {problem}")
            except SetupError as exc:
                raise SetupError(f"{exc}; the server's log ends:\n{log_path.read_text()[-3000:]}") from exc
            print(
                f"soak_serve: server ready in {startup_s:.1f} s (pid {process.pid}, port {port}); "
                f"category without thresholds: {bare}; {duration:.0f} s of load ...",
                flush=True,
            )
            record = Record()
            soak = Soak(
                port,
                time.monotonic() + duration,
                limits,
                photos,
                record,
                args.request_timeout,
                bare,
                model_threshold,
                own,
            )
            ran = load(soak, args, process)
            # the end state, with the load gone: the fixed photo is again a batch of one
            alive = process.poll() is None
            ready = one_shot(port, "GET", "/v1/ready", timeout=10)
            end_score, problem = fixed_score(port, photos, args.request_timeout) if alive else (None, "server dead")
            metrics = one_shot(port, "GET", "/metrics", timeout=10) if alive else Answer(NO_ANSWER)
            final_mb, hwm_mb = memory_mb(process.pid), memory_mb(process.pid, "VmHWM")
        finally:
            shutdown = stop_server(process)

    samples = ran["samples"]
    memory = {**memory_figures(samples, duration), "final_mb": final_mb, "vmhwm_mb": hwm_mb}
    tolerance = 1e-6  # relative to the score, for scores over 1
    difference = abs(end_score - start_score) if end_score is not None else None
    under_load = [abs(score - start_score) for score in record.fixed_scores]
    score = {
        "start": start_score,
        "end": end_score,
        "difference": difference,
        "tolerance": tolerance,
        "unchanged": difference is not None and difference <= tolerance * max(1.0, abs(start_score)),
        "problem": problem,
        "under_load_n": len(under_load),
        "under_load_max_difference": max(under_load, default=None),
    }
    end = {
        "alive": alive,
        "ready_status": ready.outcome,
        "ready_body": ready.body.decode("utf-8", "replace")[:300],
        "shutdown": shutdown,
        "stuck_threads": ran["stuck"],
    }
    failures = verdict(record, end, score)
    return {
        "date": date,
        "command": command,
        "server_command": shlex.join(server_cmd),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "checkpoint": str(checkpoint),
        "limits": vars(limits),
        "planned_seconds": duration,
        "load_seconds": ran["seconds"],
        "startup_seconds": startup_s,
        "bare_category": bare,
        "model_threshold": model_threshold,
        **summarize(record),
        "memory": memory,
        "readiness": {
            "samples": len(samples),
            "ready": sum(1 for sample in samples if sample["ready"] == "200"),
            "not_ready": dict(Counter(sample["ready"] for sample in samples if sample["ready"] != "200")),
            "slowest_ms": max((sample["ready_ms"] for sample in samples), default=0.0),
        },
        "end": end,
        "score": score,
        "server_errors": prometheus_counts(metrics.body.decode("utf-8", "replace"), "minimaxad_errors_total"),
        "samples": samples,
        "failures": failures,
        "passed": not failures,
        "server_log": str(log_path),
        "output": str(output),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 if the server held, 1 if not, 2 if it could not be set up."""
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"soak_serve: {date}\ncommand: {command}", flush=True)
    if not Path("/proc/self/status").is_file():
        print("soak_serve: error: needs Linux's /proc to read the server's memory", file=sys.stderr)
        return 2
    try:
        report = run(args, command, date)
    except SetupError as exc:
        print(f"soak_serve: error: {exc}", file=sys.stderr)
        return 2
    Path(report["output"]).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print_summary(report)
    print(f"figures: {report['output']}; server log: {report['server_log']}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
