"""``minimaxad serve``: the trained model as an HTTP service for an inspection station.

A camera PC or PLC posts each photo to ``POST /v1/predict`` and gets the score and the decision;
an operator opens the web page at ``/``. Concurrent requests are micro-batched
(:mod:`minimaxad.inference.batching`), so a loaded station gets the batch throughput of the
backend while a lone request waits at most ``max_wait_ms`` for company.

Sturdiness rules: a bad upload is answered 400 with the reason for that image and never reaches
the batch of other requests; bodies over ``max_request_mb`` get 413 before they are read; a full
queue gets 503 with ``Retry-After``; nothing a client sends is used as a path; SIGTERM lets
in-flight requests finish. Needs the ``serve`` extra: ``pip install "minimaxad[serve]"``.

Memory is bounded whatever clients send. At most ``max_connections`` requests are open at once
(uvicorn answers 503 beyond), each body at most ``max_request_mb``. Photos are decoded one at a
time straight into the network's input; the full-size photo is kept only when the request asks for
pictures (``return=heatmap,mask``). A request whose images add up to more than
``max_request_pixels`` gets 413 before anything is decoded, and the decoded pixels held by all
requests together never exceed ``max_decoded_pixels``: a request waits for its share.

The service stays honest about its health: ``/v1/ready`` answers 503 while warming up, after a
failed warm-up (with the reason) and if the inference worker has died; in the last case the
process also exits with a non-zero status so that its supervisor restarts it.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time,
# and their types are imported inside create_app (FastAPI is an optional extra).
import asyncio
import base64
import collections
import hmac
import io
import os
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from minimaxad.data.io import load_image
from minimaxad.engine.thresholds import Thresholds
from minimaxad.files import sha256_of
from minimaxad.inference.batching import BatcherClosed, MicroBatcher, QueueFull, ScoredImage
from minimaxad.inference.predict import MapStyle, Predictor, is_exported_model

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_PREFIX = "/v1"
#: formats accepted from clients (what ``minimaxad predict`` reads from disk)
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "MPO")
#: colour modes that convert to RGB faithfully; others (LAB, HSV) would be misread silently
ACCEPTED_MODES = (
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "F",
)
RETURNABLE = ("heatmap", "mask")
IMAGE_FIELD_NAMES = ("image", "images", "file", "files")


@dataclass
class ServeSettings:
    """Limits and batching of one service (the ``minimaxad serve`` options)."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64  # images waiting for a batch; beyond this, 503
    max_request_mb: float = 20.0
    max_pixels: int = 40_000_000  # per image (width x height): larger is refused as a decompression bomb
    max_request_pixels: int = 80_000_000  # the images of one request together; beyond, 413
    max_decoded_pixels: int = 80_000_000  # held by all requests at once; beyond, a request waits
    max_connections: int = 32  # open requests (uvicorn's limit_concurrency); beyond, 503
    client_timeout_s: float = 10.0  # a connection without a request head, or a pause in a body, ends after this
    workers_threads: int = max(1, min(8, os.cpu_count() or 1))  # decoding uploads, drawing heatmaps
    api_key: str | None = None
    alpha: float = 0.5  # heatmap opacity

    def __post_init__(self) -> None:
        if self.max_request_mb <= 0:
            raise ValueError(f"max_request_mb must be positive, got {self.max_request_mb}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.workers_threads < 1:
            raise ValueError(f"workers_threads must be at least 1, got {self.workers_threads}")
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_batch ({self.max_batch})")
        if self.max_decoded_pixels < self.max_pixels:
            raise ValueError(
                f"max_decoded_pixels ({self.max_decoded_pixels}) must be at least max_pixels ({self.max_pixels}): "
                f"one largest image must fit"
            )
        if self.max_request_pixels < 1 or self.max_connections < 1 or self.client_timeout_s <= 0:
            raise ValueError("max_request_pixels, max_connections and client_timeout_s must be positive")

    def limits(self) -> dict[str, Any]:
        """The limits a client may meet, as ``GET /v1/model`` shows them."""
        return {
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "max_queue": self.max_queue,
            "max_request_mb": self.max_request_mb,
            "max_pixels": self.max_pixels,
            "max_request_pixels": self.max_request_pixels,
            "max_decoded_pixels": self.max_decoded_pixels,
            "max_connections": self.max_connections,
            "client_timeout_s": self.client_timeout_s,
            "workers_threads": self.workers_threads,
        }


class ServiceError(Exception):
    """An answer other than 200: HTTP ``status``, a metrics ``kind`` and what was wrong."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.errors, self.headers = status, kind, detail, errors, headers


class BadImage(ValueError):
    """An upload that cannot be scored; the message says why."""


# -- uploads -> images -------------------------------------------------------------------------
def open_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes from a client -> a PIL image whose header has been read and checked (size, format,
    colour mode) but whose pixels are not decoded yet, or :class:`BadImage` with the reason. A
    small file that claims a huge size (a decompression bomb) costs nothing here."""
    if not data:
        raise BadImage("empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image dimensions are too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadImage(f"not an image: {len(data)} bytes that are none of {', '.join(ACCEPTED_FORMATS[:5])}")
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BadImage(
            f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
            f"(a decompression bomb, or a photo to downscale before sending)"
        )
    if image.format not in ACCEPTED_FORMATS:
        raise BadImage(f"image format {image.format} is not accepted; send PNG, JPEG, BMP, TIFF or WebP")
    if image.mode not in ACCEPTED_MODES:
        raise BadImage(
            f"image colour mode {image.mode} is not accepted (it would not convert to RGB "
            f"faithfully); send RGB or grayscale"
        )
    return image


def decode_opened(image: Image.Image, white_level: float | None = None) -> Image.Image:
    """Decode an image from :func:`open_upload` into an upright RGB photo, or :class:`BadImage`;
    ``white_level``: the model's, for photos of more than 8 bits (see :func:`load_image`)."""
    try:
        image.load()  # the whole file: truncated uploads fail here
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise BadImage(f"truncated or corrupt {image.format} data ({exc})") from exc
    try:
        return load_image(image, white_level)  # EXIF orientation, any mode -> RGB
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises on bad EXIF or pixel data
        raise BadImage(f"cannot convert the {image.mode} image to RGB ({exc})") from exc


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes from a client -> an upright RGB photo, or :class:`BadImage` with the reason
    (:func:`open_upload`, then :func:`decode_opened`)."""
    return decode_opened(open_upload(data, max_pixels))


def parse_multipart(body: bytes, content_type: str) -> tuple[list[tuple[str | None, bytes]], dict[str, str]]:
    """A ``multipart/form-data`` body, in memory -> the image parts (file name, bytes) and the
    text fields. A part is an image when it carries a file name or is called image(s)/file(s)."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError(400, "bad_request", "multipart/form-data body without a boundary in its Content-Type")
    parts: list[dict[str, Any]] = []
    header = {"field": bytearray(), "value": bytearray()}

    def begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def header_end() -> None:
        parts[-1]["headers"][bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"].clear()
        header["value"].clear()

    callbacks = {
        "on_part_begin": begin,
        "on_part_data": lambda data, start, end: parts[-1]["data"].extend(data[start:end]),
        "on_header_field": lambda data, start, end: header["field"].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header["value"].extend(data[start:end]),
        "on_header_end": header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ServiceError(400, "bad_request", f"malformed multipart body ({exc})") from exc
    images: list[tuple[str | None, bytes]] = []
    fields: dict[str, str] = {}
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None or name in IMAGE_FIELD_NAMES:
            # the client's file name is only echoed back, never used as a path
            label = filename.decode("utf-8", "replace")[-200:] if filename is not None else None
            images.append((label, bytes(part["data"])))
        else:
            fields[name] = bytes(part["data"]).decode("utf-8", "replace")
    return images, fields


def png_base64(image: Image.Image) -> str:
    """``image`` as base64 PNG text for a JSON answer (fast compression: it travels over a LAN)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: it travels over a LAN
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the model's description -------------------------------------------------------------------
def describe_model(checkpoint: str | Path, predictor: Predictor) -> dict[str, Any]:
    """What ``GET /v1/model`` tells: backbone, sizes, categories, thresholds, the file's hash."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if is_exported_model(path):
        from minimaxad.inference.export import read_metadata

        stored = read_metadata(path)
    else:
        from minimaxad.engine.checkpoint import read_checkpoint

        stored = read_checkpoint(path)
    sha = sha256_of(path)
    thresholds = predictor.thresholds.as_dict()
    per_category = {c: predictor.thresholds_for(c).as_dict() for c in predictor.categories}
    return {
        "model_id": f"{path.stem}-{sha[:12]}",
        "backbone": stored.get("backbone"),
        "image_size": stored.get("image_size"),
        "crop_size": stored.get("crop_size"),
        "input_size": predictor.transform.output_size[0],
        "categories": list(stored.get("categories") or []),
        "thresholds": thresholds,
        "category_thresholds": per_category,
        "checkpoint": {"file": path.name, "sha256": sha, "exported": is_exported_model(path)},
        "backend": predictor.backend.name,
        "device": str(predictor.device),
    }


# -- metrics ------------------------------------------------------------------------------------
class ServiceMetrics:
    """Prometheus metrics of one service, in a registry of its own (several apps in a process
    do not mix their counts)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "minimaxad_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.errors = Counter(
            "minimaxad_errors", "requests refused or failed, by kind", ["kind"], registry=self.registry
        )
        self.latency = Histogram(
            "minimaxad_request_latency_seconds",
            "time to answer a request",
            ["endpoint"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "minimaxad_batch_size",
            "images per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "minimaxad_queue_depth", "images waiting for an inference batch", registry=self.registry
        )
        self.images = Counter("minimaxad_images", "images scored, by decision", ["decision"], registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus exposition of these metrics and its content type, for ``GET /metrics``."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- memory ---------------------------------------------------------------------------------------
class PixelBudget:
    """Decoded pixels held by all requests together: :meth:`reserve` waits until a request's share
    fits under ``limit``, first come first served (a large request is not starved by a stream of
    small ones), so that memory stays bounded under any load."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._queue: collections.deque[object] = collections.deque()  # waiting requests, in arrival order
        self._changed: asyncio.Condition | None = None  # made in the event loop that uses it

    @asynccontextmanager
    async def reserve(self, pixels: int):
        """Hold ``pixels`` (at most ``limit``) for the duration of the ``async with`` block."""
        if pixels > self.limit:
            raise ValueError(f"{pixels} pixels can never fit a budget of {self.limit}")
        if self._changed is None:
            self._changed = asyncio.Condition()
        ticket = object()
        async with self._changed:
            self._queue.append(ticket)
            try:
                await self._changed.wait_for(lambda: self._queue[0] is ticket and self.in_use + pixels <= self.limit)
            finally:  # served, or cancelled while waiting: either way out of the line
                self._queue.remove(ticket)
                self._changed.notify_all()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


@dataclass
class PredictRequest:
    """One ``POST /v1/predict``, parsed and checked: its uploads and how to decide on them."""

    uploads: list[tuple[str | None, bytes]]  # (client's file name or None, bytes)
    category: str | None
    thresholds: Thresholds  # the category's, with the request's own image threshold if it gave one
    threshold_source: str
    wanted: set[str]  # pictures to return: heatmap, mask


@dataclass
class DecodedUploads:
    """A request's photos decoded into one normalised batch; the full-size photos only when the
    request wants pictures drawn on them."""

    batch: torch.Tensor | list  # (N, 3, S, S), or a tiled model's N TiledPhoto
    sizes: list[tuple[int, int]]  # (width, height) of each photo
    photos: list[Image.Image] | None


# -- the service ------------------------------------------------------------------------------------
class InspectionService:
    """Everything behind the HTTP handlers, testable without a server: the micro-batcher, the
    memory budget, request parsing, decoding, the decision and the answer.

    ``on_fatal(error)`` is called once if the inference worker dies (``serve`` then stops the
    server and exits non-zero)."""

    def __init__(
        self,
        predictor: Predictor,
        model_info: dict[str, Any],
        settings: ServeSettings | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.model_info = model_info
        self.settings = settings or ServeSettings()
        self.metrics = ServiceMetrics()
        self.on_fatal = on_fatal or (lambda error: None)
        self.batcher = MicroBatcher(
            predictor,
            max_batch=self.settings.max_batch,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            on_batch=self.metrics.batch_size.observe,
            on_queue_depth=self.metrics.queue_depth.set,
            on_death=self._worker_died,
        )
        self.budget = PixelBudget(self.settings.max_decoded_pixels)
        self.max_bytes = int(self.settings.max_request_mb * 2**20)
        self.model_id = model_info["model_id"]
        self._styles: dict[str | None, MapStyle] = {}  # category -> how its maps are drawn (as predict)

    # -- life cycle and health ------------------------------------------------------------------
    def start(self) -> None:
        """Start the inference worker (it warms the backend up first)."""
        self.batcher.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the worker."""
        self.batcher.close(timeout)

    def _worker_died(self, error: BaseException) -> None:
        self.metrics.errors.labels("worker_died").inc()
        self.on_fatal(error)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``GET /v1/ready``: (HTTP status, body)."""
        batcher = self.batcher
        if batcher.failure is not None:
            return 503, {"status": "failed", "detail": f"the inference worker has stopped: {batcher.failure}"}
        if batcher.warmup_error is not None:
            return 503, {"status": "failed", "detail": f"warm-up failed: {batcher.warmup_error}"}
        if not batcher.ready:
            return 503, {"status": "warming up" if not batcher.wait_ready(0) else "shutting down"}
        return 200, {"status": "ready", "model_id": self.model_id}

    def describe(self) -> dict[str, Any]:
        """``GET /v1/model``: the model and the limits a client may meet."""
        return {**self.model_info, **self.settings.limits()}

    def check_ready(self) -> None:
        """Raise the 503 a request gets while the model cannot score."""
        status, body = self.readiness()
        if status != 200:
            retry = {"Retry-After": "1"} if body["status"] in ("warming up", "shutting down") else None
            detail = body.get("detail") or f"the model is {body['status']}"
            raise ServiceError(503, "not_ready", detail, headers=retry)

    # -- requests -----------------------------------------------------------------------------------
    def parse(self, body: bytes, content_type: str, query: dict[str, Optional[str]]) -> PredictRequest:
        """The uploads and options of a request (query parameters win over multipart fields)."""
        if content_type.lower().startswith("multipart/form-data"):
            uploads, fields = parse_multipart(body, content_type)
            if not uploads:
                raise ServiceError(
                    400,
                    "bad_request",
                    "multipart body without an image part (send the photo as a file part, e.g. "
                    "curl -F image=@photo.png)",
                )
        else:  # raw bytes, whatever the declared type: the decoder decides what they are
            uploads, fields = [(None, body)], {}
        if len(uploads) > self.settings.max_queue:
            raise ServiceError(
                413, "too_large", f"{len(uploads)} images in one request; at most {self.settings.max_queue}"
            )

        def option(name: str) -> str | None:
            return query.get(name) if query.get(name) is not None else fields.get(name)

        category = option("category") or None
        try:
            thresholds = self.predictor.thresholds_for(category)
        except ValueError as exc:
            raise ServiceError(422, "unknown_category", str(exc)[:300]) from exc
        source = thresholds.image.note
        threshold_text = option("threshold")
        if threshold_text not in (None, ""):
            try:
                value = float(threshold_text)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value):
                raise ServiceError(
                    422, "bad_request", f"threshold must be a finite number, got {threshold_text[:50]!r}"
                )
            thresholds, source = thresholds.with_image_threshold(value, "set by the request"), "request"
        wanted = {w.strip() for w in (option("return") or "").split(",") if w.strip()}
        if wanted - set(RETURNABLE):
            raise ServiceError(
                422,
                "bad_request",
                f"return= takes {', '.join(RETURNABLE)} (comma-separated), got "
                f"{', '.join(sorted(wanted - set(RETURNABLE)))[:100]!r}",
            )
        return PredictRequest(uploads, category, thresholds, source, wanted)

    def open_all(self, request: PredictRequest) -> tuple[list[Image.Image], int]:
        """Read every upload's header (no pixel decoded): the opened images and the decoded pixels
        the request will hold at once (all its photos with pictures, else its largest); 400 for
        bad uploads, 413 beyond ``max_request_pixels``."""
        opened, errors = [], []
        for index, (name, data) in enumerate(request.uploads):
            try:
                opened.append(open_upload(data, self.settings.max_pixels))
            except BadImage as exc:
                errors.append({"index": index, "name": name, "error": str(exc)})
        if errors:
            raise bad_images(errors)
        pixels = [image.size[0] * image.size[1] for image in opened]
        if sum(pixels) > self.settings.max_request_pixels:
            raise ServiceError(
                413,
                "too_large",
                f"the {len(pixels)} images of this request have {sum(pixels)} pixels in all, more than the limit "
                f"of {self.settings.max_request_pixels} (--max-request-pixels); send fewer or smaller photos",
            )
        held = [self.held_pixels(*image.size) for image in opened]
        need = sum(held) if request.wanted else max(held)
        if need > self.budget.limit:
            raise ServiceError(
                413,
                "too_large",
                f"with this model's tiling the request holds {need} pixels' worth of memory at once (photos and "
                f"their float32 tiles), more than --max-decoded-pixels {self.budget.limit}; send smaller photos "
                "or raise --max-decoded-pixels",
            )
        return opened, need

    def held_pixels(self, width: int, height: int) -> int:
        """What one photo holds while it is scored, counted in decoded pixels: the photo, and for a
        tiled model also its normalised tiles (float32: 4 times a decoded pixel's bytes)."""
        tiling = self.predictor.tiling
        if tiling is None:
            return width * height
        return width * height + 4 * tiling.count(width, height) * tiling.image_size**2

    def decode_all(self, request: PredictRequest, opened: list[Image.Image]) -> DecodedUploads:
        """In a worker thread (torch calls on the event loop's thread pay for PyTorch's intra-op
        threading, 20x slower on a busy CPU, and would stall every request): one photo at a time,
        straight into the network's input; the photo itself is kept only for pictures."""
        tensors, sizes, photos, errors = [], [], [], []
        for index, image in enumerate(opened):
            try:
                photo = decode_opened(image, self.predictor.white_level)
            except BadImage as exc:
                errors.append({"index": index, "name": request.uploads[index][0], "error": str(exc)})
                continue
            finally:
                image.close()
            if not errors:
                # a tiled model takes the photo's tiles (at its own resolution), stitched again after the network
                tiled = self.predictor.tiling is not None
                tensors.append(self.predictor.tiler.cut(photo) if tiled else self.predictor.transform(photo))
                sizes.append(photo.size)
                if request.wanted:
                    photos.append(photo)
            del photo
        if errors:
            raise bad_images(errors)
        batch = tensors if self.predictor.tiling is not None else torch.stack(tensors)
        return DecodedUploads(batch, sizes, photos if request.wanted else None)

    async def predict(self, request: PredictRequest, limiter: Any) -> dict[str, Any]:
        """Decode, score in the shared batches, decide and answer; decoded pixels held under the budget."""
        import anyio

        started = time.perf_counter()
        self.check_ready()
        opened, pixels = self.open_all(request)
        async with self.budget.reserve(pixels):
            decode_started = time.perf_counter()
            n = len(opened)
            self.batcher.expect(n)  # the batcher may wait for these while they decode
            announced = True
            try:
                decoded = await anyio.to_thread.run_sync(self.decode_all, request, opened, limiter=limiter)
                decode_ms = 1e3 * (time.perf_counter() - decode_started)
                self.check_ready()
                announced = False  # submit() settles the announcement, whether it queues the images or not
                futures = self.batcher.submit(decoded.batch, [request.thresholds.image.value] * n, expected=True)
            except QueueFull as exc:
                raise ServiceError(503, "queue_full", str(exc), headers={"Retry-After": "1"}) from exc
            except BatcherClosed as exc:
                raise ServiceError(503, "shutting_down", str(exc), headers={"Retry-After": "2"}) from exc
            finally:
                if announced:  # images that will not come (bad upload, cancelled request): no batch waits
                    self.batcher.cancel(n)
            try:
                scored = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            except BatcherClosed as exc:
                raise ServiceError(503, "not_ready", str(exc)) from exc
            except Exception as exc:
                raise ServiceError(500, "internal", f"inference failed: {type(exc).__name__}: {exc}") from exc

            def build() -> list[dict[str, Any]]:
                return [self.answer(request, i, decoded, scored[i], decode_ms) for i in range(n)]

            results = await anyio.to_thread.run_sync(build, limiter=limiter) if request.wanted else build()
        total_ms = 1e3 * (time.perf_counter() - started)
        for result in results:
            result["timing_ms"]["total"] = total_ms
        return {"model_id": self.model_id, "results": results}

    def answer(
        self, request: PredictRequest, index: int, decoded: DecodedUploads, scored: ScoredImage, decode_ms: float
    ) -> dict[str, Any]:
        """The answer for one image: score, decision under the request's thresholds, pictures."""
        thresholds = request.thresholds
        decision = thresholds.decisions(np.array([scored.score]))[0]
        normalized = float(thresholds.normalize(np.array([scored.score]))[0])
        self.metrics.images.labels(decision).inc()
        width, height = decoded.sizes[index]
        result: dict[str, Any] = {
            "index": index,
            "name": request.uploads[index][0],
            "score": scored.score,
            "normalized_score": None if np.isnan(normalized) else normalized,
            "decision": decision,
            "threshold": thresholds.image.value,
            "threshold_source": request.threshold_source,
            "pixel_threshold": thresholds.pixel.value,
            "category": request.category,
            "model_id": self.model_id,
            "width": width,
            "height": height,
            "rechecked_in_float32": scored.rechecked,
            "batch_size": scored.batch_size,
            "timing_ms": {"decode": decode_ms, "queue": scored.queue_ms, "inference": scored.inference_ms},
        }
        if request.wanted:
            style = self._styles.get(request.category)
            if style is None:
                style = self._styles[request.category] = MapStyle.of(
                    self.predictor, request.category, self.settings.alpha
                )
            photo = decoded.photos[index]
            if "heatmap" in request.wanted:
                result["heatmap_png"] = png_base64(style.heatmap(photo, scored.anomaly_map))
            if "mask" in request.wanted:
                result["mask_png"] = png_base64(style.mask(photo, scored.anomaly_map))
        return result

    async def read_body(self, request: Any) -> bytes:
        """The request's body, refused with 413 past ``max_request_mb`` before more is read."""
        from starlette.requests import ClientDisconnect

        limit = self.settings.max_request_mb
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise ServiceError(
                413,
                "too_large",
                f"request body of {int(declared)} bytes is over the limit of {limit:g} MB (--max-request-mb)",
            )
        chunks, total, pause = [], 0, self.settings.client_timeout_s
        stream = request.stream().__aiter__()
        try:
            while True:
                try:  # a client that stops sending mid-body must not hold its connection for ever
                    chunk = await asyncio.wait_for(stream.__anext__(), pause)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError as exc:
                    raise ServiceError(
                        408, "timeout", f"no part of the body arrived for {pause:g} s (--client-timeout)"
                    ) from exc
                total += len(chunk)
                if total > self.max_bytes:
                    raise ServiceError(
                        413, "too_large", f"request body is over the limit of {limit:g} MB (--max-request-mb)"
                    )
                chunks.append(chunk)
        except ClientDisconnect as exc:  # the client went away mid-upload: nobody to answer
            raise ServiceError(400, "disconnected", "the client closed the connection before the body ended") from exc
        return b"".join(chunks)

    def check_key(self, headers: Any) -> None:
        """401 unless the request carries the API key (when one is set)."""
        key = self.settings.api_key
        if key is None:
            return
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token if scheme.lower() == "bearer" else None
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise ServiceError(
                401,
                "unauthorized",
                "missing or wrong API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )


def bad_images(errors: list[dict[str, Any]]) -> ServiceError:
    """The 400 answer for uploads that cannot be scored, with the reason for each."""
    detail = "; ".join(f"image {e['index']}{' (' + e['name'] + ')' if e['name'] else ''}: {e['error']}" for e in errors)
    return ServiceError(400, "bad_image", detail, errors=errors)


PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "one or several photos (any part with a file name)",
                    },
                    "category": {"type": "string"},
                    "threshold": {"type": "number"},
                    "return": {"type": "string", "example": "heatmap,mask"},
                },
            }
        },
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


# -- the application --------------------------------------------------------------------------------
def create_app(
    predictor: Predictor,
    model_info: dict[str, Any],
    settings: ServeSettings | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
):
    """The FastAPI application over a loaded ``predictor``: thin handlers around an
    :class:`InspectionService`. Its lifespan starts the micro-batcher (warm-up included:
    ``/v1/ready`` turns 200 after it) and drains it at shutdown."""
    import anyio
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from minimaxad import __version__

    service = InspectionService(predictor, model_info, settings, on_fatal)
    metrics = service.metrics
    limiter = anyio.CapacityLimiter(service.settings.workers_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:  # uvicorn gets here after in-flight requests were answered
            await anyio.to_thread.run_sync(service.stop, 30.0)

    app = FastAPI(
        title="minimaxad",
        version=__version__,
        lifespan=lifespan,
        description="MiniMaxAD anomaly detection at the inspection station: post photos to "
        "/v1/predict, get scores, decisions, heatmaps and defect masks.",
    )
    app.state.service, app.state.batcher, app.state.metrics = service, service.batcher, metrics
    app.state.settings = service.settings

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.errors.labels(exc.kind).inc()
        body: dict[str, Any] = {"detail": exc.detail, "kind": exc.kind}
        if exc.errors:
            body["errors"] = exc.errors
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            metrics.errors.labels("internal").inc()
            raise
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")  # route templates only: bounded label values
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def require_key(request: Request) -> None:
        service.check_key(request.headers)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get(f"{API_PREFIX}/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(f"{API_PREFIX}/ready", summary="Model loaded and warmed up, inference worker alive")
    async def ready() -> JSONResponse:
        status, body = service.readiness()
        headers = {"Retry-After": "1"} if body["status"] in ("warming up", "shutting down") else None
        return JSONResponse(body, status, headers=headers)

    @app.get(
        f"{API_PREFIX}/model",
        summary="The model (backbone, image size, categories, thresholds, hash) and the service's limits",
        dependencies=[Depends(require_key)],
    )
    async def model() -> dict[str, Any]:
        return service.describe()

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_key)])
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    @app.post(
        f"{API_PREFIX}/predict",
        dependencies=[Depends(require_key)],
        openapi_extra={"requestBody": PREDICT_BODY},
        summary="Score photos: decisions, scores and (return=heatmap,mask) the pictures",
        responses={
            400: {"description": "an image cannot be scored (the reason per image)"},
            401: {"description": "API key missing or wrong"},
            413: {
                "description": "body over --max-request-mb, images over --max-request-pixels, or more "
                "images than the queue holds"
            },
            422: {"description": "unknown category, bad threshold or return="},
            503: {"description": "queue full or not ready: retry after Retry-After seconds"},
        },
    )
    async def predict(
        request: Request,
        category: Optional[str] = Query(None, description="unified model: decide with this category's thresholds"),
        threshold: Optional[str] = Query(None, description="image threshold for this request"),
        return_: Optional[str] = Query(
            None, alias="return", description="comma-separated: heatmap, mask (PNG, base64)"
        ),
    ) -> JSONResponse:
        body = await service.read_body(request)
        parsed = service.parse(
            body,
            request.headers.get("content-type", ""),
            {"category": category, "threshold": threshold, "return": return_},
        )
        del body
        return JSONResponse(await service.predict(parsed, limiter))

    return app


# -- connections ------------------------------------------------------------------------------------
def request_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11) that closes a connection which
    has not sent a complete request head within ``seconds``: uvicorn itself waits for ever, and
    each such connection counts against ``--max-connections`` (a leaking client or a port scanner
    would lock everyone out with 503). After a response, uvicorn's keep-alive timeout applies."""
    try:
        import httptools  # noqa: F401  (uvicorn's choice when it is installed)
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class RequestDeadlineProtocol(base):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._request_deadline = self.loop.call_later(seconds, self._close_without_request)

        def _close_without_request(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # no request has begun
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._request_deadline.cancel()
            super().connection_lost(exc)

    return RequestDeadlineProtocol


# -- the command --------------------------------------------------------------------------------
def read_api_key(path: str | Path) -> str:
    """The key in ``path`` (its first line, stripped); an empty or missing file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"API key file {path} does not exist; write the key in it (one line)")
    key = path.read_text().strip().splitlines()[0].strip() if path.read_text().strip() else ""
    if len(key) < 8:
        raise ValueError(f"the API key in {path} is empty or shorter than 8 characters; write a longer key")
    return key


def build_service(
    checkpoint: str | Path,
    *,
    backend: str = "fused",
    device: str = "auto",
    settings: ServeSettings | None = None,
    encoder_weights: str | None = None,
    recheck_margin: float | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    **threshold_overrides: Any,
):
    """Load the model once and build the application (``minimaxad serve`` without the server)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist; pass the checkpoint.pt of a run, "
            f"or a file written by 'minimaxad export'"
        )
    predictor = Predictor.from_checkpoint(
        checkpoint,
        device=device,
        encoder_weights=encoder_weights,
        backend=backend,
        recheck_margin=recheck_margin,
        **threshold_overrides,
    )
    return create_app(predictor, describe_model(checkpoint, predictor), settings, on_fatal)


def serve(
    checkpoint: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "fused",
    device: str = "auto",
    settings: ServeSettings | None = None,
    encoder_weights: str | None = None,
    recheck_margin: float | None = None,
    log_level: str = "info",
    echo=print,
    **threshold_overrides: Any,
) -> None:
    """Run the service until SIGINT/SIGTERM (in-flight requests are answered first)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise RuntimeError('minimaxad serve needs FastAPI and uvicorn: pip install "minimaxad[serve]"') from exc
    settings = settings or ServeSettings()
    fatal: list[BaseException] = []
    server: list[Any] = []

    def stop_on_fatal(error: BaseException) -> None:  # from the batcher's thread
        fatal.append(error)
        echo(f"minimaxad serve: error: the inference worker has stopped ({type(error).__name__}: {error}); exiting")
        if server:
            server[0].should_exit = True

    app = build_service(
        checkpoint,
        backend=backend,
        device=device,
        settings=settings,
        encoder_weights=encoder_weights,
        recheck_margin=recheck_margin,
        on_fatal=stop_on_fatal,
        **threshold_overrides,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        echo(
            f"warning: listening on {host} without an API key: anyone on the network can use the service "
            f"(--api-key-file F)"
        )
    echo(f"minimaxad serve: http://{host}:{port}/ (web page), http://{host}:{port}/docs (API); Ctrl-C to stop")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        access_log=False,
        limit_concurrency=settings.max_connections,
        http=request_deadline_protocol(settings.client_timeout_s),
    )
    server.append(uvicorn.Server(config))
    server[0].run()
    if fatal:  # the supervisor (systemd, Kubernetes, Docker) restarts a process that exits non-zero
        raise RuntimeError(f"the inference worker stopped: {type(fatal[0]).__name__}: {fatal[0]}")
