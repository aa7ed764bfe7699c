"""Micro-batching for the HTTP service: images from concurrent requests run as one batch.

A network is much faster per image on a batch than one image at a time, but a camera posts one
photo per request. :class:`MicroBatcher` collects the images of whatever requests arrive within
``max_wait_ms`` of the first one (at most ``max_batch``), runs them in one call on the predictor's
backend in a single worker thread, and hands each request its own result.

* The batcher waits only for images it knows are coming: requests announce themselves
  (:meth:`MicroBatcher.expect`) while their uploads are decoded. A lone request runs at once; a
  burst of requests fills one batch instead of being split by the time its decoding takes.
* Backpressure: at most ``max_queue`` images wait; a request that does not fit raises
  :class:`QueueFull` at once (the service answers 503), so memory stays bounded.
* A failing batch fails only the futures of that batch; the worker goes on. A request that is
  cancelled while it waits (its client gone, a timeout) leaves the queue; its images are not run.
* If the worker thread dies anyway, :attr:`MicroBatcher.failure` says why, :attr:`ready` turns
  False, the queued requests fail, and ``on_death`` is called (the service exits so that its
  supervisor restarts it). A failed warm-up likewise leaves the batcher not ready.
* :meth:`MicroBatcher.close` stops taking images and answers everything already queued.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from minimaxad.inference.predict import Predictor


class QueueFull(RuntimeError):
    """The batcher's queue cannot take these images now (retry later)."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new images."""


@dataclass
class ScoredImage:
    """The backend's output for one image, as :meth:`Predictor.predict` would compute it."""

    score: float
    anomaly_map: np.ndarray  # (S, S) float32 at the network's input size
    rechecked: bool  # re-scored in float32 (reduced-precision backend, score near the threshold)
    batch_size: int  # how many images ran together
    queue_ms: float  # waiting for the batch to fill
    inference_ms: float  # the batch's backend call


@dataclass
class _Pending:
    image: torch.Tensor  # (3, S, S) normalised
    threshold: float | None  # image threshold of its request (for the float32 re-check)
    future: Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Run ``predictor.backend`` on batches gathered from concurrent :meth:`submit` calls.

    ``on_batch(size)`` and ``on_queue_depth(depth)`` are called from the worker thread (metrics);
    ``on_death(error)`` once, from the worker thread, if the worker stops for any reason other than
    :meth:`close`.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        on_death: Callable[[BaseException], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < max_batch:
            raise ValueError(f"max_queue ({max_queue}) must hold at least one full batch (max_batch {max_batch})")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda size: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._on_death = on_death or (lambda error: None)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._incoming = 0  # images of requests being decoded: they will be submitted shortly
        self._lock = threading.Condition()
        self._closing = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="minimaxad-batcher", daemon=True)
        self.warmup_error: BaseException | None = None
        self.failure: BaseException | None = None  # why the worker stopped, if it stopped on its own

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "MicroBatcher":
        """Start the worker; it warms the backend up (first calls compile/allocate) before serving."""
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """Warmed up, the worker alive, and taking images."""
        return (
            self._ready.is_set()
            and self.warmup_error is None
            and self.failure is None
            and not self._closing
            and self._thread.is_alive()
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the worker has tried its warm-up batch (see ``warmup_error``); False if ``timeout``
        seconds pass first."""
        return self._ready.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new images, answer the queued ones, stop the worker."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return len(self._queue)

    # -- requests ----------------------------------------------------------------------------
    def expect(self, n: int) -> None:
        """``n`` images are on their way (being decoded); :meth:`submit` or :meth:`cancel` follows."""
        with self._lock:
            self._incoming += n

    def cancel(self, n: int) -> None:
        """``n`` expected images will not come (bad upload, refused request)."""
        with self._lock:
            self._incoming = max(0, self._incoming - n)
            self._lock.notify_all()

    def submit(self, images: torch.Tensor, thresholds: Sequence[float | None], expected: bool = False) -> list[Future]:
        """Queue a request's images ``(N, 3, S, S)``, all or none; one future per image, resolving
        to a :class:`ScoredImage`. Raises :class:`QueueFull` or :class:`BatcherClosed`.
        ``expected``: these images were announced with :meth:`expect`."""
        if len(images) != len(thresholds):
            raise ValueError(f"{len(images)} images but {len(thresholds)} thresholds")
        with self._lock:
            if expected:
                self._incoming = max(0, self._incoming - len(images))
                self._lock.notify_all()
            if self._closing:
                raise BatcherClosed("the service is shutting down")
            if self.failure is not None:
                raise BatcherClosed(f"the inference worker has stopped: {self.failure}")
            if len(self._queue) + len(images) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} images are waiting (limit {self.max_queue}); retry shortly")
            pending = [_Pending(image, threshold, Future()) for image, threshold in zip(images, thresholds)]
            self._queue.extend(pending)
            self._on_queue_depth(len(self._queue))
            self._lock.notify_all()
        return [p.future for p in pending]

    # -- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            try:
                self._warm_up()
            except Exception as exc:  # reported by /v1/ready and to requests; the worker waits for close
                self.warmup_error = exc
            self._ready.set()
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._score(batch)
        except BaseException as exc:  # a bug of ours, or out of memory: say so, never hang requests
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        with self._lock:
            self.failure = exc
            stranded = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        self._ready.set()
        for pending in stranded:
            _resolve(pending.future, error=BatcherClosed(f"the inference worker has stopped: {exc}"))
        self._on_death(exc)

    def _warm_up(self) -> None:
        size = self.predictor.transform.output_size[0]
        for n in sorted({1, self.max_batch}):  # compiled backends specialise on the batch size
            self.predictor.backend(torch.zeros(n, 3, size, size))
        self.predictor.backend.synchronize()

    def _next_batch(self) -> list[_Pending] | None:
        """Block for the first image, then gather more while more are expected, until the batch is
        full, ``max_wait`` has passed (counted from when the worker was free and the first image
        there), or the batcher is closing."""
        free_since = time.perf_counter()
        with self._lock:
            while not self._queue:
                if self._closing:
                    return None
                self._lock.wait()
            deadline = max(self._queue[0].queued_at, free_since) + self.max_wait
            while len(self._queue) < self.max_batch and self._incoming > 0 and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._on_queue_depth(len(self._queue))
        return batch

    def _score(self, batch: list[_Pending]) -> None:
        # a request cancelled while waiting (client gone, timeout) is dropped; the others run
        batch = [p for p in batch if _claim(p.future)]
        if not batch:
            return
        started = time.perf_counter()
        try:
            if self.warmup_error is not None:
                raise RuntimeError(f"the model failed to warm up: {self.warmup_error}")
            thresholds = [p.threshold for p in batch]
            if self.predictor.tiling is not None:  # photos cut into tiles: max_batch counts tiles
                maps, scores, rechecked = self.predictor.run_photos(
                    [p.image for p in batch], thresholds, self.max_batch
                )
            else:
                maps, scores, rechecked = self.predictor.run(torch.stack([p.image for p in batch]), thresholds)
        except Exception as exc:  # this batch fails; the worker goes on
            for p in batch:
                _resolve(p.future, error=exc)
            return
        except BaseException as exc:  # not an error of this batch's: the worker stops (see _die)
            for p in batch:
                _resolve(p.future, error=BatcherClosed(f"the inference worker has stopped: {exc}"))
            raise
        finished = time.perf_counter()
        self._on_batch(len(batch))
        for i, p in enumerate(batch):
            scored = ScoredImage(
                score=float(scores[i]),
                anomaly_map=maps[i],
                rechecked=bool(rechecked[i]),
                batch_size=len(batch),
                queue_ms=1e3 * (started - p.queued_at),
                inference_ms=1e3 * (finished - started),
            )
            _resolve(p.future, result=scored)


def _claim(future: Future) -> bool:
    """Mark ``future`` running; False when it was cancelled or is no longer pending."""
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # already running or done: not ours to run
        return False


def _resolve(future: Future, *, result: object = None, error: BaseException | None = None) -> None:
    """Answer ``future`` unless it is already done (cancelled by its waiter): never raises."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
