"""Inference backends: one interface over PyTorch eager, torch.compile, reduced precision,
ONNX Runtime, OpenVINO and TorchScript.

Every backend runs the whole :class:`~minimaxad.inference.pipeline.InferencePipeline` (network, maps,
smoothing, score) and is called the same way::

    backend = create_backend("onnxruntime", model, image_size=256)
    maps, scores = backend(images)   # (B, S, S) float32, (B,) float32

``images`` is a normalised ``(B, 3, S, S)`` float32 batch. Torch backends return tensors on their
device; ONNX Runtime and OpenVINO return CPU tensors.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minimaxad.engine.scoring import resolve_device
from minimaxad.engine.trainer import cpu_supports_bf16
from minimaxad.inference.graph_files import BackendUnavailable, compare_with_pipeline, write_pipeline_file  # noqa: F401 (BackendUnavailable: re-exported)
from minimaxad.inference.pipeline import InferencePipeline, build_pipeline, fused_copy  # noqa: F401 (re-export)
from minimaxad.inference.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    INT8_BACKEND,
    calibration_images,
    int8_available,
    quantize_pipeline,
    require_int8,
    write_int8_files,
)
from minimaxad.models import MiniMaxAD

# name -> what it is (``minimaxad benchmark --backends``, ``predict --backend``)
BACKENDS: dict[str, str] = {
    "eager": "training-form network (branches and BatchNorms not fused), float32: the baseline",
    "fused": "re-parameterized network, float32, PyTorch eager",
    "compiled": "re-parameterized network through torch.compile (inductor, frozen weights), float32",
    "bf16": "re-parameterized network in bfloat16 (CPUs with AVX-512 BF16/AMX, or CUDA); maps in float32",
    "fp16": "re-parameterized network in float16 (CUDA only); maps in float32",
    "onnxruntime": "the exported ONNX pipeline in ONNX Runtime, float32 (extra: minimaxad[onnx])",
    "openvino": "the exported ONNX pipeline compiled by OpenVINO, float32 (extra: minimaxad[openvino])",
    "openvino-bf16": "the exported ONNX pipeline compiled by OpenVINO at bfloat16 inference precision",
    "openvino-int8": "the network quantized to INT8 by NNCF (calibrated on normal images), maps in float32, "
    "run by OpenVINO (extra: minimaxad[int8])",
    "torchscript": "the traced TorchScript pipeline, float32",
}
TORCH_BACKENDS = ("eager", "fused", "compiled", "bf16", "fp16")


class UntrustedFileError(PermissionError):
    """A file format that can run code was given without the caller saying it trusts the file."""


TORCHSCRIPT_TRUST_MESSAGE = (
    "{path} is a TorchScript file: loading it runs the program stored in it (torch.jit.load can "
    "execute arbitrary operators), unlike checkpoints (read with weights_only=True) and ONNX/OpenVINO "
    "files (graphs of known operators). Load it only if you made it or trust who did: pass "
    "--trust-torchscript (Python: trust=True)"
)


class Backend(ABC):
    """``backend(images (B, 3, S, S)) -> (maps (B, S, S), scores (B,))``, both float32."""

    name: str
    device: torch.device

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A normalised batch ``(B, 3, S, S)`` -> anomaly maps ``(B, S, S)`` and image scores ``(B,)``, float32."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA) so that timings are honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device})"


class TorchBackend(Backend):
    """An :class:`InferencePipeline` run by PyTorch, eager or through ``torch.compile``."""

    def __init__(
        self,
        name: str,
        pipeline: InferencePipeline,
        device: torch.device,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        self.name = name
        self.device = device
        self.channels_last = channels_last
        self.pipeline = pipeline.eval().to(device)
        if channels_last:
            self.pipeline = self.pipeline.to(memory_format=torch.channels_last)
        self.runner = self.pipeline
        self.compiled = compile
        if compile:
            # frozen weights: inductor folds them as constants and pre-packs them for oneDNN;
            # on CUDA, CUDA graphs remove the per-kernel launch cost that dominates batch 1
            options = {"freezing": True}
            if device.type == "cuda":
                options["triton.cudagraphs"] = True
            self.runner = torch.compile(self.pipeline, dynamic=False, options=options)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``(B, S, S)`` and scores ``(B,)`` of a normalised batch ``(B, 3, S, S)``, on this backend's device."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # inductor's weight freezing needs no_grad (inference tensors cannot be frozen)
        with torch.no_grad() if self.compiled else torch.inference_mode():
            outputs = self.runner(images)
        maps, scores = outputs[0], outputs[1]
        if self.compiled and self.device.type == "cuda":
            maps, scores = maps.clone(), scores.clone()  # CUDA-graph outputs are overwritten by the next call
        return maps[:, 0], scores


class OnnxRuntimeBackend(Backend):
    """An exported ONNX pipeline run by ONNX Runtime (CUDA provider when asked for and present).

    On the CPU a batch of at least ``streams`` images is cut into chunks of ``chunk`` images that
    ``streams`` single-threaded sessions score side by side (one per core), which keeps each
    core's activations in its own cache instead of splitting every operator across cores:
    measured 1.17-1.27x the images/second of one session with all threads on 2 cores at batch 16.
    Smaller batches (latency) go to one session with every thread. ``streams=1`` turns it off.
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        name: str = "onnxruntime",
        streams: int | None = None,
        chunk: int = 2,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(
                "the onnxruntime backend needs ONNX Runtime: pip install 'minimaxad[onnx]'"
            ) from exc
        self.ort = ort
        self.name = name
        self.path = str(path)
        self.model_bytes = Path(path).read_bytes()  # later sessions need no file (a temporary export may be gone)
        self.device = torch.device(device)
        self.threads = threads or torch.get_num_threads()
        self.providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "ONNX Runtime has no CUDA provider here: pip install onnxruntime-gpu, "
                    "or run the onnxruntime backend with --device cpu"
                )
            self.providers.insert(0, "CUDAExecutionProvider")
        self.streams = 1 if self.device.type == "cuda" else (streams or self.threads)
        self.chunk = max(1, chunk)
        self._latency_session = None
        self._stream_sessions: list = []
        self._pool = None
        first = self._session(self.threads if self.streams == 1 else 1)
        if self.streams == 1:
            self._latency_session = first
        else:
            self._stream_sessions.append(first)
        self.input_name = first.get_inputs()[0].name
        self.output_names = [o.name for o in first.get_outputs()][:2]

    def _session(self, threads: int):
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        return self.ort.InferenceSession(self.model_bytes, options, providers=self.providers)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``(B, S, S)`` and scores ``(B,)``: one session for short batches, parallel streams for long ones."""
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if self.streams == 1 or len(array) < self.streams:
            if self._latency_session is None:
                self._latency_session = self._session(self.threads)
            maps, scores = self._latency_session.run(self.output_names, {self.input_name: array})
            return torch.from_numpy(maps[:, 0]), torch.from_numpy(scores)
        return self._run_streams(array)

    def _run_streams(self, array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import queue
        from concurrent.futures import ThreadPoolExecutor

        while len(self._stream_sessions) < self.streams:
            self._stream_sessions.append(self._session(1))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="minimaxad-ort")
            self._free = queue.Queue()
            for session in self._stream_sessions:
                self._free.put(session)

        def score(part: np.ndarray):
            session = self._free.get()  # ONNX Runtime releases the GIL while it runs
            try:
                return session.run(self.output_names, {self.input_name: part})
            finally:
                self._free.put(session)

        chunk = min(self.chunk, max(1, len(array) // self.streams))
        parts = [array[i : i + chunk] for i in range(0, len(array), chunk)]
        results = list(self._pool.map(score, parts))
        maps = np.concatenate([r[0] for r in results])
        scores = np.concatenate([r[1] for r in results])
        return torch.from_numpy(maps[:, 0]), torch.from_numpy(scores)

    def synchronize(self) -> None:
        """Nothing to wait for: ``session.run`` returns when the outputs are on the host."""
        pass


class OpenVinoBackend(Backend):
    """An exported pipeline (ONNX or OpenVINO IR) compiled by OpenVINO for the CPU.

    ``precision="bf16"`` sets OpenVINO's inference precision to bfloat16 (matrix products and
    convolutions in bf16 with float32 accumulation); it needs a CPU with AVX-512 BF16 or AMX.
    ``f32`` is asked for explicitly: on such CPUs OpenVINO would pick bf16 by itself. An INT8 IR
    (``openvino-int8``) runs at ``f32``: its quantized layers in int8, everything else (the maps) in float32.
    Batches of at least ``streams`` images run as chunks on OpenVINO's throughput streams (one
    per core), smaller ones on a latency-compiled model (see :class:`OnnxRuntimeBackend`).
    """

    def __init__(
        self,
        path: str | Path,
        precision: str = "f32",
        threads: int | None = None,
        name: str | None = None,
        streams: int | None = None,
        chunk: int = 2,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable("the openvino backend needs OpenVINO: pip install 'minimaxad[openvino]'") from exc
        if precision not in ("f32", "bf16"):
            raise ValueError(f"OpenVINO precision must be f32 or bf16, got {precision!r}")
        self.ov = ov
        self.core = ov.Core()
        if precision == "bf16" and "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailable(
                "this CPU has no bfloat16 support (AVX-512 BF16 or AMX): use the openvino (float32) backend"
            )
        self.name = name or ("openvino" if precision == "f32" else "openvino-bf16")
        self.device = torch.device("cpu")
        self.model = self.core.read_model(str(path))
        self.precision = precision
        self.threads = threads or torch.get_num_threads()
        self.streams = streams or self.threads
        self.chunk = max(1, chunk)
        self._latency = None
        self._queue = None
        self._throughput = None
        if self.streams == 1:
            self._latency_model()
        else:
            self._throughput_requests()

    def _compile(self, hint: str, streams: int | None = None):
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": hint,
            "INFERENCE_NUM_THREADS": self.threads,
        }
        if streams:
            config["NUM_STREAMS"] = streams
        return self.core.compile_model(self.model, "CPU", config)

    def _latency_model(self):
        if self._latency is None:
            compiled = self._compile("LATENCY")
            self._latency = (compiled, compiled.create_infer_request())
        return self._latency

    def _throughput_requests(self):
        if self._queue is None:
            self._throughput = self._compile("THROUGHPUT", self.streams)
            self._queue = [self._throughput.create_infer_request() for _ in range(self.streams)]
        return self._throughput, self._queue

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``(B, S, S)`` and scores ``(B,)``: one request for short batches, parallel streams for long ones."""
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if self.streams == 1 or len(array) < self.streams:
            compiled, request = self._latency_model()
            results = request.infer({0: array})
            maps, scores = results[compiled.output(0)], results[compiled.output(1)]
        else:
            # one request per stream, started together and waited for in waves: no Python
            # callbacks run on OpenVINO's threads (they would need the GIL, which can deadlock)
            compiled, requests = self._throughput_requests()
            chunk = min(self.chunk, max(1, len(array) // self.streams))
            parts = [array[i : i + chunk] for i in range(0, len(array), chunk)]
            map_parts, score_parts = [], []
            for wave in range(0, len(parts), len(requests)):
                running = list(zip(requests, parts[wave : wave + len(requests)]))
                for request, part in running:
                    request.start_async({0: part})
                for request, _ in running:
                    request.wait()
                    map_parts.append(np.array(request.get_output_tensor(0).data))
                    score_parts.append(np.array(request.get_output_tensor(1).data))
            maps, scores = np.concatenate(map_parts), np.concatenate(score_parts)
        return (
            torch.from_numpy(np.array(maps[:, 0], dtype=np.float32)),
            torch.from_numpy(np.array(scores, dtype=np.float32)),
        )

    def synchronize(self) -> None:
        """Nothing to wait for: inference requests return when the outputs are on the host."""
        pass

    def close(self) -> None:
        """Free OpenVINO's objects in dependency order: requests, compiled models, model, core.
        (Left to the garbage collector, in whatever order it picks, the core could go first and
        crash the process when a compiled model goes later.)"""
        for name in ("_queue", "_latency", "_throughput", "model", "core"):
            if hasattr(self, name):
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()


class TorchScriptBackend(Backend):
    """A traced TorchScript pipeline (``minimaxad export --format torchscript``)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", *, trust: bool = False) -> None:
        if not trust:
            raise UntrustedFileError(TORCHSCRIPT_TRUST_MESSAGE.format(path=path))
        self.name = "torchscript"
        self.device = torch.device(device)
        with warnings.catch_warnings():  # torch.jit's deprecation notice: TorchScript still runs
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``(B, S, S)`` and scores ``(B,)`` of a normalised batch ``(B, 3, S, S)``."""
        with torch.inference_mode():
            outputs = self.module(images.to(self.device))
        return outputs[0][:, 0], outputs[1]


def create_backend(
    name: str,
    model: MiniMaxAD,
    *,
    image_size: int,
    top_ratio: float = 0.01,
    image_threshold: float | None = None,
    device: str | torch.device = "auto",
    channels_last: bool | None = None,
    workdir: str | Path | None = None,
    threads: int | None = None,
    smooth: bool = True,
    calibration: torch.Tensor | None = None,
) -> Backend:
    """Build backend ``name`` (see :data:`BACKENDS`) for ``model`` at ``image_size``.

    ``smooth=False`` gives the unsmoothed maps a tiled model stitches (see :class:`InferencePipeline`).
    ``openvino-int8`` needs ``calibration``: normalised normal images ``(N, 3, S, S)`` to calibrate the
    quantization on (:func:`int8_backend_from_checkpoint` takes them from a checkpoint's training data).
    ``model`` may be in training form (needed for ``eager``) or fused; the others work on a
    re-parameterized copy. File backends export the pipeline into ``workdir`` (a temporary
    folder by default) and check it against PyTorch there. ``channels_last`` defaults to True on
    CUDA and False on the CPU (measured: oneDNN's large depthwise kernels are not faster in it).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    dev = resolve_device(device)
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if name in TORCH_BACKENDS:
        if name == "fp16" and dev.type != "cuda":
            raise BackendUnavailable("fp16 is a CUDA backend (CPU float16 kernels are slow); on the CPU use bf16")
        if name == "bf16" and dev.type == "cpu" and not cpu_supports_bf16():
            raise BackendUnavailable(
                "this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16 would be slower "
                "than float32 here; use fused, compiled or onnxruntime"
            )
        form = "fused" if name == "compiled" else name
        pipeline = build_pipeline(model, form, top_ratio=top_ratio, image_threshold=image_threshold, smooth=smooth)
        return TorchBackend(name, pipeline, dev, channels_last=channels_last, compile=name == "compiled")
    # file backends: export once (a private copy: export moves it to the CPU), check, load like a deployed file
    pipeline = build_pipeline(
        model, "fused", top_ratio=top_ratio, image_threshold=image_threshold, private_copy=True, smooth=smooth
    )
    temporary = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="minimaxad-export-")) if temporary else Path(workdir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if name == INT8_BACKEND:
            require_int8()  # before the checks below: a missing package is the first thing to say
            if calibration is None:
                raise ValueError(
                    "the openvino-int8 backend is calibrated on normal images: pass calibration= (normalised "
                    "(N, 3, S, S) images), or use int8_backend_from_checkpoint / 'minimaxad export --format openvino-int8'"
                )
            # the float32 graph is checked against PyTorch inside; the INT8 one is meant to differ a little
            quantized = quantize_pipeline(pipeline, image_size, calibration)
            write_int8_files(quantized, folder / "pipeline.xml", overwrite=True)  # our own name in our own folder
            return OpenVinoBackend(folder / "pipeline.xml", "f32", threads=threads, name=INT8_BACKEND)
        path = folder / ("pipeline.pt" if name == "torchscript" else "pipeline.onnx")
        write_pipeline_file(
            pipeline, path, "torchscript" if name == "torchscript" else "onnx", image_size, overwrite=True
        )  # our own name in our own (or the caller's work) folder
        backend = load_backend(path, name, device=dev, threads=threads, trust=True)  # a file we just made
        # the file is checked in float32 (bfloat16 inference is meant to differ by ~1e-3)
        checker = load_backend(path, "openvino", threads=threads) if name == "openvino-bf16" else backend
        compare_with_pipeline(checker, pipeline, image_size, label=f"the exported file of the {name} backend")
        return backend
    finally:
        if temporary:  # the runtimes hold the model in memory by now: nothing is left in the temp folder
            shutil.rmtree(folder, ignore_errors=True)


def load_backend(
    path: str | Path,
    name: str | None = None,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    trust: bool = False,
) -> Backend:
    """A backend for an exported file: ``.onnx`` (onnxruntime by default, or openvino /
    openvino-bf16), ``.xml`` (OpenVINO IR) or a TorchScript file (``.pt``/``.ts``).

    TorchScript runs the code stored in the file, so it is only loaded with ``trust=True``
    (:class:`UntrustedFileError` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}; create one with 'minimaxad export'")
    suffix = path.suffix.lower()
    if name is None:
        name = {".onnx": "onnxruntime", ".xml": "openvino"}.get(suffix, "torchscript")
    dev = resolve_device(device)
    if name == "onnxruntime":
        if suffix != ".onnx":
            raise ValueError(f"the onnxruntime backend runs .onnx files, got {path}")
        return OnnxRuntimeBackend(path, dev, threads=threads)
    if name in ("openvino", "openvino-bf16"):
        if suffix not in (".onnx", ".xml"):
            raise ValueError(f"the {name} backend runs .onnx or .xml files, got {path}")
        return OpenVinoBackend(path, "bf16" if name == "openvino-bf16" else "f32", threads=threads)
    if name == INT8_BACKEND:
        if suffix != ".xml":
            raise ValueError(
                f"the {name} backend runs the .xml written by 'minimaxad export --format openvino-int8', got {path}"
            )
        return OpenVinoBackend(path, "f32", threads=threads, name=INT8_BACKEND)
    if name == "torchscript":
        return TorchScriptBackend(path, dev, trust=trust)
    raise ValueError(
        f"backend {name!r} cannot run an exported file; use onnxruntime, openvino, openvino-bf16, openvino-int8 "
        "or torchscript"
    )


def available_backends(device: str | torch.device = "auto") -> list[str]:
    """Backends that can run here (packages installed, hardware present)."""
    import importlib.util

    dev = resolve_device(device)
    names = ["eager", "fused", "compiled"]
    if dev.type == "cuda" or cpu_supports_bf16():
        names.append("bf16")
    if dev.type == "cuda":
        names.append("fp16")
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        names.append("onnxruntime")
        if dev.type == "cpu" and importlib.util.find_spec("openvino"):
            names.append("openvino")
            if cpu_supports_bf16():
                names.append("openvino-bf16")
            if int8_available():
                names.append(INT8_BACKEND)
    names.append("torchscript")
    return names


def int8_backend_from_checkpoint(
    state: dict[str, Any],
    model: MiniMaxAD,
    *,
    calibration_images_count: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_data: str | Path | None = None,
    tiling: Any = None,
    threads: int | None = None,
) -> Backend:
    """The ``openvino-int8`` backend of a checkpoint (``state``, ``model`` its network), quantized now
    and calibrated on its own normal training images (or ``calibration_data``, a folder of normal
    images); ``tiling`` (default: the checkpoint's) makes a tiled model's tile backend, calibrated on
    tiles. Nothing is written outside a temporary folder, removed before this returns."""
    from minimaxad.engine.checkpoint import checkpoint_tiling

    tiling = tiling if tiling is not None else checkpoint_tiling(state)
    images, _ = calibration_images(state, calibration_images_count, calibration_data, tiling)
    size = state.get("crop_size") or state["image_size"]
    return create_backend(
        INT8_BACKEND,
        model,
        image_size=size,
        top_ratio=state.get("top_ratio", 0.01),
        device="cpu",
        threads=threads,
        smooth=tiling is None,
        calibration=images,
    )
