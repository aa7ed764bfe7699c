"""``minimaxad serve``: the trained model as an HTTP service for an inspection station.

A camera PC or PLC posts each photo to ``POST /v1/predict`` and gets the score and the decision;
an operator opens the web page at ``/``. Concurrent requests are micro-batched
(:mod:`minimaxad.inference.batching`), so a loaded station gets the batch throughput of the
backend while a lone request waits at most ``max_wait_ms`` for company.

Sturdiness rules: a bad upload is answered 400 with the reason for that image and never reaches
the batch of other requests; bodies over ``max_request_mb`` get 413 before they are read; a full
queue gets 503 with ``Retry-After``; nothing a client sends is used as a path; SIGTERM lets
in-flight requests finish. Needs the ``serve`` extra: ``pip install "minimaxad[serve]"``.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time,
# and their types are imported inside create_app (FastAPI is an optional extra).
import asyncio
import base64
import hmac
import io
import os
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from minimaxad.data.io import load_image
from minimaxad.engine.thresholds import normalize_scores
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
def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes from a client -> an upright RGB photo, or :class:`BadImage` with the reason.

    The header is checked before any pixel is decoded, so a small file that claims a huge size
    (a decompression bomb) costs nothing."""
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
    try:
        image.load()  # the whole file: truncated uploads fail here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"truncated or corrupt {image.format} data ({exc})") from exc
    try:
        return load_image(image)  # EXIF orientation, any mode -> RGB
    except (OSError, ValueError) as exc:
        raise BadImage(f"cannot convert the {image.mode} image to RGB ({exc})") from exc


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
    thresholds = {"image": predictor.thresholds["image"], "pixel": predictor.thresholds["pixel"]}
    per_category = {c: predictor.thresholds_for(c) for c in predictor.categories}
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


# -- the application ----------------------------------------------------------------------------
def create_app(predictor: Predictor, model_info: dict[str, Any], settings: ServeSettings | None = None):
    """The FastAPI application over a loaded ``predictor``. Its lifespan starts the micro-batcher
    (warm-up included: ``/v1/ready`` turns 200 after it) and drains it at shutdown."""
    import anyio
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from minimaxad import __version__

    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    batcher = MicroBatcher(
        predictor,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        on_batch=metrics.batch_size.observe,
        on_queue_depth=metrics.queue_depth.set,
    )
    limiter = anyio.CapacityLimiter(settings.workers_threads)
    max_bytes = int(settings.max_request_mb * 2**20)
    categories = model_info.get("categories") or []
    model_id = model_info["model_id"]
    calibration = predictor.calibration
    styles: dict[str | None, MapStyle] = {}  # category -> how its maps are drawn (as minimaxad predict)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:  # uvicorn gets here after in-flight requests were answered
            await anyio.to_thread.run_sync(batcher.close, 30.0)

    app = FastAPI(
        title="minimaxad",
        version=__version__,
        lifespan=lifespan,
        description="MiniMaxAD anomaly detection at the inspection station: post photos to "
        "/v1/predict, get scores, decisions, heatmaps and defect masks.",
    )
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings

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
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token if scheme.lower() == "bearer" else None
        if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ServiceError(
                401,
                "unauthorized",
                "missing or wrong API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # -- pages and probes --------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get(f"{API_PREFIX}/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(f"{API_PREFIX}/ready", summary="Model loaded and warmed up")
    async def ready() -> JSONResponse:
        if batcher.warmup_error is not None:
            return JSONResponse({"status": "failed", "detail": f"warm-up failed: {batcher.warmup_error}"}, 503)
        if not batcher.ready:
            return JSONResponse(
                {"status": "warming up" if not batcher.wait_ready(0) else "shutting down"},
                503,
                headers={"Retry-After": "1"},
            )
        return JSONResponse({"status": "ready", "model_id": model_id})

    @app.get(
        f"{API_PREFIX}/model",
        summary="The model: backbone, image size, categories, thresholds, hash",
        dependencies=[Depends(require_key)],
    )
    async def model() -> dict[str, Any]:
        return {
            **model_info,
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "max_request_mb": settings.max_request_mb,
            "max_pixels": settings.max_pixels,
        }

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_key)])
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    # -- prediction ----------------------------------------------------------------------------
    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise ServiceError(
                413,
                "too_large",
                f"request body of {int(declared)} bytes is over the limit of "
                f"{settings.max_request_mb:g} MB (--max-request-mb)",
            )
        from starlette.requests import ClientDisconnect

        chunks, total = [], 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_bytes:
                    raise ServiceError(
                        413,
                        "too_large",
                        f"request body is over the limit of {settings.max_request_mb:g} MB (--max-request-mb)",
                    )
                chunks.append(chunk)
        except ClientDisconnect as exc:  # the client went away mid-upload: nobody to answer
            raise ServiceError(400, "disconnected", "the client closed the connection before the body ended") from exc
        return b"".join(chunks)

    def request_options(
        query: dict[str, Optional[str]], fields: dict[str, str]
    ) -> tuple[str | None, float | None, set[str]]:
        category = query["category"] if query["category"] is not None else fields.get("category") or None
        threshold_text = query["threshold"] if query["threshold"] is not None else fields.get("threshold")
        wanted_text = query["return"] if query["return"] is not None else fields.get("return", "")
        if category is not None and categories and category not in categories:
            raise ServiceError(
                422,
                "unknown_category",
                f"unknown category {category[:100]!r}; this model knows {', '.join(categories)}",
            )
        threshold = None
        if threshold_text not in (None, ""):
            try:
                threshold = float(threshold_text)
            except ValueError:
                threshold = float("nan")
            if not np.isfinite(threshold):
                raise ServiceError(
                    422, "bad_request", f"threshold must be a finite number, got {threshold_text[:50]!r}"
                )
        wanted = {w.strip() for w in wanted_text.split(",") if w.strip()}
        if wanted - set(RETURNABLE):
            raise ServiceError(
                422,
                "bad_request",
                f"return= takes {', '.join(RETURNABLE)} (comma-separated), got "
                f"{', '.join(sorted(wanted - set(RETURNABLE)))[:100]!r}",
            )
        return category, threshold, wanted

    def decode_all(uploads: list[tuple[str | None, bytes]]):
        """In a worker thread: torch calls on the event loop's (main) thread pay for PyTorch's
        intra-op threading, 20x slower than here on a busy CPU, and would stall every request."""
        photos, errors = [], []
        for index, (name, data) in enumerate(uploads):
            try:
                photos.append(decode_upload(data, settings.max_pixels))
            except BadImage as exc:
                errors.append({"index": index, "name": name, "error": str(exc)})
        batch = predictor.preprocess(photos)[0] if photos and not errors else None
        return photos, batch, errors

    def answer(
        index: int,
        name: str | None,
        photo: Image.Image,
        scored: ScoredImage,
        category: str | None,
        threshold_override: float | None,
        wanted: set[str],
        decode_ms: float,
    ) -> dict[str, Any]:
        thresholds = predictor.thresholds_for(category)
        calib = (calibration.get("per_category") or {}).get(category, calibration)
        threshold = threshold_override if threshold_override is not None else thresholds["image"]["value"]
        pixel_threshold = thresholds["pixel"]["value"]
        if threshold is None:
            decision, normalized = "unknown", None
        else:
            normal = calib.get("normal_scores")
            normalized = float(
                normalize_scores(np.array([scored.score]), threshold, np.asarray(normal) if normal else None)[0]
            )
            decision = "anomalous" if scored.score >= threshold else "normal"
        metrics.images.labels(decision).inc()
        result: dict[str, Any] = {
            "index": index,
            "name": name,
            "score": scored.score,
            "normalized_score": normalized,
            "decision": decision,
            "threshold": threshold,
            "threshold_source": "request" if threshold_override is not None else thresholds["image"]["note"],
            "pixel_threshold": pixel_threshold,
            "category": category,
            "model_id": model_id,
            "width": photo.size[0],
            "height": photo.size[1],
            "rechecked_in_float32": scored.rechecked,
            "batch_size": scored.batch_size,
            "timing_ms": {"decode": decode_ms, "queue": scored.queue_ms, "inference": scored.inference_ms},
        }
        if wanted:
            if category not in styles:
                styles[category] = MapStyle.of(predictor, category, settings.alpha)
            if "heatmap" in wanted:
                result["heatmap_png"] = png_base64(styles[category].heatmap(photo, scored.anomaly_map))
            if "mask" in wanted:
                result["mask_png"] = png_base64(styles[category].mask(photo, scored.anomaly_map))
        return result

    predict_body = {
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

    @app.post(
        f"{API_PREFIX}/predict",
        dependencies=[Depends(require_key)],
        openapi_extra={"requestBody": predict_body},
        summary="Score photos: decisions, scores and (return=heatmap,mask) the pictures",
        responses={
            400: {"description": "an image cannot be scored (the reason per image)"},
            401: {"description": "API key missing or wrong"},
            413: {"description": "body over --max-request-mb, or more images than the queue holds"},
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
        started = time.perf_counter()
        body = await read_body(request)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            uploads, fields = parse_multipart(body, content_type)
            if not uploads:
                raise ServiceError(
                    400,
                    "bad_request",
                    "multipart body without an image part (send the photo as a "
                    "file part, e.g. curl -F image=@photo.png)",
                )
        else:  # raw bytes, whatever the declared type: the decoder decides what they are
            uploads, fields = [(None, body)], {}
        chosen_category, threshold_value, wanted = request_options(
            {"category": category, "threshold": threshold, "return": return_}, fields
        )
        if len(uploads) > settings.max_queue:
            raise ServiceError(413, "too_large", f"{len(uploads)} images in one request; at most {settings.max_queue}")
        decode_started = time.perf_counter()
        batcher.expect(len(uploads))  # the batcher may wait for these while they decode
        try:
            photos, batch, errors = await anyio.to_thread.run_sync(decode_all, uploads, limiter=limiter)
        except BaseException:
            batcher.cancel(len(uploads))
            raise
        decode_ms = 1e3 * (time.perf_counter() - decode_started)
        if errors:
            batcher.cancel(len(uploads))
            detail = "; ".join(
                f"image {e['index']}{' (' + e['name'] + ')' if e['name'] else ''}: {e['error']}" for e in errors
            )
            raise ServiceError(400, "bad_image", detail, errors=errors)
        if not batcher.ready:
            batcher.cancel(len(uploads))
            if batcher.warmup_error is not None:
                raise ServiceError(503, "not_ready", f"the model failed to warm up: {batcher.warmup_error}")
            raise ServiceError(503, "not_ready", "the model is still warming up", headers={"Retry-After": "1"})
        effective = (
            threshold_value
            if threshold_value is not None
            else predictor.thresholds_for(chosen_category)["image"]["value"]
        )
        try:
            futures = batcher.submit(batch, [effective] * len(batch), expected=True)
        except QueueFull as exc:
            raise ServiceError(503, "queue_full", str(exc), headers={"Retry-After": "1"}) from exc
        except BatcherClosed as exc:
            raise ServiceError(503, "shutting_down", str(exc), headers={"Retry-After": "2"}) from exc
        try:
            scored = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except Exception as exc:
            raise ServiceError(500, "internal", f"inference failed: {type(exc).__name__}: {exc}") from exc

        def build() -> list[dict[str, Any]]:
            return [
                answer(i, uploads[i][0], photos[i], scored[i], chosen_category, threshold_value, wanted, decode_ms)
                for i in range(len(photos))
            ]

        results = await anyio.to_thread.run_sync(build, limiter=limiter) if wanted else build()
        total_ms = 1e3 * (time.perf_counter() - started)
        for result in results:
            result["timing_ms"]["total"] = total_ms
        return JSONResponse({"model_id": model_id, "results": results})

    return app


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
    return create_app(predictor, describe_model(checkpoint, predictor), settings)


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
    app = build_service(
        checkpoint,
        backend=backend,
        device=device,
        settings=settings,
        encoder_weights=encoder_weights,
        recheck_margin=recheck_margin,
        **threshold_overrides,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        echo(
            f"warning: listening on {host} without an API key: anyone on the network can use the service "
            f"(--api-key-file F)"
        )
    echo(f"minimaxad serve: http://{host}:{port}/ (web page), http://{host}:{port}/docs (API); Ctrl-C to stop")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30, access_log=False
    )
    uvicorn.Server(config).run()
