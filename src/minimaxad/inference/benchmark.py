"""Inference speed of every backend, against this machine's own limit (``minimaxad benchmark``).

For each backend, image size and batch size: images/second, latency per call (median, p95),
the first call's time (export, compilation or quantization), peak memory, the relative error of its
maps against the training-form model on the same images, and its share of the machine's limit:
images/second over (matrix-multiply FLOP/s, measured in the same run, / the model's FLOPs per
image), float32 for every backend and int8 (``torch._int_mm``) for the INT8 one.

Each backend runs in a child process of its own, so peak memory is its own and no backend's warm
caches help another; the children are kept alive and driven in rounds: in each round every
backend in turn measures every batch size for ``seconds / rounds``, the order of the backends
turning from round to round. On a machine shared with other work the load changes from minute to
minute: interleaved, every backend sees the same moments, and the ratios between backends hold.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from minimaxad.engine.scoring import resolve_device
from minimaxad.engine.trainer import build_optimizer
from minimaxad.losses import adc_loss
from minimaxad.models import MiniMaxAD

REFERENCE_BATCH = 2  # images every backend scores for the accuracy column
# How long a backend's child process may take before it is killed (child_timeout): generous, so
# that only a hung child (a deadlocked runtime, a compiler that never returns) is cut short.
CHILD_STARTUP_S = 120.0  # Python and torch imports, the model built
CHILD_PER_IMAGE_SIZE_S = 300.0  # a backend's export, compilation or quantization at one image size, on a slow CPU
CHILD_PER_MEASUREMENT_S = 60.0  # warm-up and the minimum of 3 runs of one (size, batch), over --seconds
DEFAULT_ROUNDS = 3  # rounds the measurement time of each (backend, size, batch) is split into
# INT8 calibration images in the benchmark: the speed does not depend on them (a checkpoint's own
# training images are used when they can be read, random images otherwise)
BENCHMARK_CALIBRATION_IMAGES = 32


# -- machine and model -------------------------------------------------------------------------
def matmul_flops_per_second(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    sizes: Sequence[int] = (1024, 2048, 4096),
    seconds: float = 1.0,
) -> float:
    """Best multiply-add FLOP/s of square matrix products (``2 n^3`` per product) over ``sizes``;
    ``torch.int8``: integer operations per second of ``torch._int_mm`` (int8 x int8 -> int32, the
    VNNI/AMX products INT8 inference runs on)."""
    best = 0.0
    for n in sizes:
        if dtype == torch.int8:
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
            runs, elapsed = _repeat(lambda: torch._int_mm(a, b), device, seconds, warmup=2)
        else:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            runs, elapsed = _repeat(lambda: a @ b, device, seconds, warmup=2)
        best = max(best, 2 * n**3 * runs / elapsed)
    return best


def model_flops(model: MiniMaxAD, image_size: int) -> float:
    """FLOPs of one image through the network as given (convolutions and matrix products,
    multiply-add = 2), counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def _repeat(fn, device: torch.device, min_seconds: float, warmup: int = 2, min_runs: int = 3) -> tuple[int, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= min_runs:
            return runs, elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere), for the benchmark's header."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- one backend (runs in a child process) -------------------------------------------------------
def peak_rss_reset() -> None:
    """Reset the process's peak resident memory (Linux); ignored elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (VmHWM), or None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def build_model(backbone: str, checkpoint: str | None, seed: int = 0) -> tuple[MiniMaxAD, int | None, float]:
    """The training-form network: a trained checkpoint, or random weights (seeded)."""
    if checkpoint:
        from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint

        state = read_checkpoint(checkpoint)
        size = state.get("crop_size") or state["image_size"]
        return model_from_checkpoint(state), size, state.get("top_ratio", 0.01)
    torch.manual_seed(seed)
    model = MiniMaxAD(backbone).eval()
    randomize_batchnorm(model)
    return model, None, 0.01


def randomize_batchnorm(model: MiniMaxAD) -> None:
    """Fresh BatchNorms are identities (mean 0, var 1): give them random statistics so that the
    fused form really differs from the training form and the comparison means something."""
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            module.running_var.copy_(1 + 0.2 * torch.rand(n, generator=g))
            module.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=g))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _calibration(spec: dict[str, Any], size: int) -> tuple[torch.Tensor, str]:
    """INT8 calibration images for the benchmark: the checkpoint's training images when they can be
    read, else random normal images (the speed does not depend on them; the maps' error does)."""
    count = int(spec.get("calibration_images") or BENCHMARK_CALIBRATION_IMAGES)
    if spec.get("checkpoint"):
        from minimaxad.engine.checkpoint import read_checkpoint
        from minimaxad.inference.quantize import calibration_images

        try:
            return calibration_images(read_checkpoint(spec["checkpoint"]), count)
        except (OSError, ValueError):
            pass
    g = torch.Generator().manual_seed(4321 + size)
    return torch.randn(count, 3, size, size, generator=g), f"{count} random images (speed only)"


class BackendWorker:
    """One backend in its own process (the child's side): set up at an image size, then measure
    batch sizes when told to. Commands and replies are JSON objects (see :func:`_child_main`)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.device = resolve_device(spec["device"])
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        self.model, _, self.top_ratio = build_model(spec["backbone"], spec.get("checkpoint"))
        self.backend: Any = None
        self.size: int | None = None
        self.generator = torch.Generator()

    def setup(self, size: int) -> dict[str, Any]:
        """Build the backend at ``size`` (the previous one is dropped first), score the reference
        images (saved for the accuracy column) and reset the peak-memory counter before it."""
        from minimaxad.inference.backends import INT8_BACKEND, create_backend

        self.backend = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        peak_rss_reset()
        extra: dict[str, Any] = {}
        started = time.perf_counter()
        calibration = None
        if self.spec["backend"] == INT8_BACKEND:
            calibration, extra["calibration"] = _calibration(self.spec, size)
            started = time.perf_counter()  # reading the calibration images is not the backend's time
        self.backend = create_backend(
            self.spec["backend"],
            self.model,
            image_size=size,
            top_ratio=self.top_ratio,
            device=self.device,
            threads=self.spec.get("threads"),
            **({"calibration": calibration} if calibration is not None else {}),
        )
        self.size = size
        self.generator.manual_seed(1234 + size)
        reference = torch.randn(REFERENCE_BATCH, 3, size, size, generator=self.generator)
        maps, scores = self.backend(reference)  # the first call: compilation happens here
        self.backend.synchronize()
        first_call = time.perf_counter() - started
        np.savez(
            Path(self.spec["reference_dir"]) / f"{self.spec['backend']}_{size}.npz",
            maps=maps.float().cpu().numpy(),
            scores=scores.float().cpu().numpy(),
        )
        return {"first_call_s": first_call, **extra}

    def measure(self, batch: int, seconds: float) -> dict[str, Any]:
        """Time calls at ``batch`` for at least ``seconds`` (and 3 calls), after 2 warm-up calls."""
        images = torch.randn(batch, 3, self.size, self.size, generator=self.generator)
        if self.device.type == "cuda" and self.spec["backend"] in _TORCH_INPUT_ON_DEVICE:
            images = images.to(self.device)
        latencies: list[float] = []
        run = self.backend

        def call() -> None:
            t = time.perf_counter()
            run(images)
            run.synchronize()
            latencies.append(time.perf_counter() - t)

        runs, elapsed = _repeat(call, self.device, seconds, warmup=2)
        return {"runs": runs, "elapsed": elapsed, "latencies": latencies[-runs:]}

    def memory(self) -> dict[str, Any]:
        """Peak memory (MB) since the last :meth:`setup`: CUDA's allocator on a GPU, else the process's RSS."""
        if self.device.type == "cuda":
            return {"peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        return {"peak_memory_mb": peak_rss_mb()}


# backends whose inputs go to the GPU before the timed call (the file backends take host arrays)
_TORCH_INPUT_ON_DEVICE = ("eager", "fused", "compiled", "bf16", "fp16", "torchscript")


# -- the whole benchmark -----------------------------------------------------------------------
def run_benchmark(
    backends: Sequence[str] | None = None,
    *,
    backbone: str = "unireplknet_n",
    checkpoint: str | None = None,
    image_sizes: Sequence[int] = (224, 256),
    batch_sizes: Sequence[int] = (1, 16),
    device: str = "auto",
    seconds: float = 3.0,
    threads: int | None = None,
    output: Path | None = Path("benchmark.json"),
    echo=print,
    child_timeout_s: float | None = None,
    rounds: int = DEFAULT_ROUNDS,
) -> dict[str, Any]:
    """Measure ``backends`` (default: every one that can run here), print the table, write JSON.

    Each backend runs in a child process of its own, kept alive while the backends take turns
    (``rounds`` rounds of ``seconds / rounds`` per size and batch; see the module docstring). A
    child that does not answer within ``child_timeout_s`` seconds (default: :func:`child_timeout`
    of the step) is killed; that backend, like one that failed, is listed under ``not_measured``
    with its reason (``"timed out after N s"``)."""
    from minimaxad.inference.backends import BACKENDS, INT8_BACKEND, available_backends

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    backends = list(backends) if backends else available_backends(dev)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    rounds = max(1, int(rounds))
    model, checkpoint_size, _ = build_model(backbone, checkpoint)
    if checkpoint_size is not None:
        image_sizes = [checkpoint_size]
    fused = model.reparameterize()  # for FLOP counting only; children rebuild their own
    flops = {size: model_flops(fused, size) for size in image_sizes}
    del model, fused
    machine = {
        "torch": torch.__version__,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "matmul_fp32_flops": matmul_flops_per_second(dev, torch.float32),
    }
    try:
        machine["matmul_bf16_flops"] = matmul_flops_per_second(dev, torch.bfloat16)
    except RuntimeError:
        machine["matmul_bf16_flops"] = None
    machine["matmul_int8_ops"] = None
    if INT8_BACKEND in backends and dev.type == "cpu":
        try:
            machine["matmul_int8_ops"] = matmul_flops_per_second(dev, torch.int8)
        except (RuntimeError, AttributeError):  # no integer matrix product in this torch build
            pass
    name = checkpoint or f"{backbone} (random weights)"
    where = machine["gpu"] or f"{machine['threads']} threads, {machine['cpu']}"
    echo(f"minimaxad benchmark: {name}; torch {machine['torch']}, {dev} ({where})")
    echo(
        f"float32 matrix products: {machine['matmul_fp32_flops'] / 1e9:.1f} GFLOP/s"
        + (f"; bfloat16: {machine['matmul_bf16_flops'] / 1e9:.1f} GFLOP/s" if machine["matmul_bf16_flops"] else "")
        + (f"; int8: {machine['matmul_int8_ops'] / 1e9:.1f} GOP/s" if machine["matmul_int8_ops"] else "")
    )
    for size in image_sizes:
        limit = machine["matmul_fp32_flops"] / flops[size]
        int8 = (
            f", int8 limit {machine['matmul_int8_ops'] / flops[size]:.2f} images/s"
            if machine["matmul_int8_ops"]
            else ""
        )
        echo(f"model at {size} px: {flops[size] / 1e9:.2f} GFLOP/image -> float32 limit {limit:.2f} images/s{int8}")
    echo(f"backends interleaved: {rounds} round(s) of {seconds / rounds:g} s per backend, size and batch")

    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="minimaxad-bench-") as tmp:
        children: dict[str, BackendChild] = {}
        try:
            for backend in backends:
                spec = {
                    "backend": backend,
                    "backbone": backbone,
                    "checkpoint": checkpoint,
                    "image_sizes": list(image_sizes),
                    "batch_sizes": list(batch_sizes),
                    "device": str(dev),
                    "seconds": seconds,
                    "threads": threads,
                    "reference_dir": tmp,
                }
                children[backend] = BackendChild(spec, Path(tmp))
            for size in image_sizes:
                rows.extend(
                    _measure_size(children, size, batch_sizes, seconds, rounds, failures, child_timeout_s, echo)
                )
        finally:
            for child in children.values():
                child.close()
        _add_comparisons(rows, Path(tmp), flops, machine["matmul_fp32_flops"], machine["matmul_int8_ops"])
    echo(format_table(rows))
    report = {
        "machine": machine,
        "model": name,
        "backbone": backbone,
        "flops_per_image": {str(k): v for k, v in flops.items()},
        "rounds": rounds,
        "rows": rows,
        "not_measured": failures,
    }
    if output is not None:
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
        echo(f"results: {output}")
    return report


def _measure_size(
    children: dict[str, "BackendChild"],
    size: int,
    batch_sizes: Sequence[int],
    seconds: float,
    rounds: int,
    failures: dict[str, str],
    limit: float | None,
    echo,
) -> list[dict[str, Any]]:
    """One image size: every backend set up in turn, then the rounds, then each one's peak memory."""

    def ask(backend: str, command: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        reply = children[backend].request(command, timeout if limit is None else limit)
        if "error" in reply:
            failures[backend] = reply["error"]
            echo(f"  {backend}: not measured: {reply['error']}")
            children[backend].close()
            return None
        return reply

    live = [b for b in children if b not in failures]
    setups: dict[str, dict[str, Any]] = {}
    for backend in live:
        startup = 0.0 if children[backend].started_up else CHILD_STARTUP_S
        reply = ask(backend, {"cmd": "setup", "size": size}, startup + CHILD_PER_IMAGE_SIZE_S)
        if reply is not None:
            setups[backend] = reply
    timings: dict[tuple[str, int], list[dict[str, Any]]] = {}
    share = seconds / rounds
    for round_index in range(rounds):
        order = [b for b in live if b in setups]
        turn = round_index % max(1, len(order))
        for batch in batch_sizes:
            for backend in order[turn:] + order[:turn]:  # each round starts with another backend
                if backend in failures:
                    continue
                command = {"cmd": "measure", "batch": batch, "seconds": share}
                reply = ask(backend, command, 10.0 * share + CHILD_PER_MEASUREMENT_S)
                if reply is not None:
                    timings.setdefault((backend, batch), []).append(reply)
    rows = []
    for backend in [b for b in live if b in setups and b not in failures]:
        memory = ask(backend, {"cmd": "memory"}, CHILD_PER_MEASUREMENT_S)
        if memory is None:
            continue
        for batch in batch_sizes:
            parts = timings.get((backend, batch), [])
            runs = sum(p["runs"] for p in parts)
            elapsed = sum(p["elapsed"] for p in parts)
            latencies = [t for p in parts for t in p["latencies"]]
            rows.append(
                {
                    "backend": backend,
                    "image_size": size,
                    "batch": batch,
                    "images_per_second": batch * runs / elapsed,
                    "images_per_second_by_round": [batch * p["runs"] / p["elapsed"] for p in parts],
                    "latency_median_ms": 1e3 * statistics.median(latencies),
                    "latency_p95_ms": 1e3 * float(np.percentile(latencies, 95)),
                    "runs": runs,
                    "first_call_s": setups[backend]["first_call_s"],
                    "peak_memory_mb": memory["peak_memory_mb"],
                    **({"calibration": setups[backend]["calibration"]} if "calibration" in setups[backend] else {}),
                }
            )
    return rows


def child_timeout(spec: dict[str, Any]) -> float:
    """Seconds a backend's child process may take for all of ``spec`` (its steps together): a
    start-up allowance, a compilation allowance per image size, and per (image size, batch)
    measurement ten times the requested ``seconds`` plus a fixed allowance for warm-up and the
    minimum runs. Each step of an interleaved run gets its own share of this (see :func:`run_benchmark`)."""
    sizes, batches = len(spec["image_sizes"]), len(spec["batch_sizes"])
    per_measurement = 10.0 * float(spec["seconds"]) + CHILD_PER_MEASUREMENT_S
    return CHILD_STARTUP_S + sizes * CHILD_PER_IMAGE_SIZE_S + sizes * batches * per_measurement


def _child_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "minimaxad.inference.benchmark", str(spec_path)]


class BackendChild:
    """The parent's handle on one backend's child process: JSON commands on its stdin, JSON
    replies on its stdout (the child sends everything else it prints to stderr, kept in a log file).

    :meth:`request` returns the reply, or ``{"error": ...}`` when the child failed, died, or did
    not answer within the timeout (then it is killed, with every process it started)."""

    def __init__(self, spec: dict[str, Any], folder: Path) -> None:
        self.backend = spec["backend"]
        spec_path = folder / f"{self.backend}.spec.json"
        spec_path.write_text(json.dumps(spec))
        self.log_path = folder / f"{self.backend}.log"
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        self.own_group = hasattr(os, "killpg")  # POSIX: the child leads a process group, killed whole
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            _child_command(spec_path),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=self.own_group,
        )
        self.replies: queue.Queue = queue.Queue()
        # a thread reads the replies: a blocking read can then be waited for with a timeout
        threading.Thread(target=self._read, daemon=True).start()
        self.started_up = False
        self.closed = False

    def _read(self) -> None:
        for line in self.process.stdout:
            self.replies.put(line)
        self.replies.put(None)  # end of file: the child exited

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``command`` and wait up to ``timeout`` seconds for the reply."""
        if self.closed:
            return {"error": "the child process was stopped"}
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"error": self._exit_reason()}
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"error": f"timed out after {timeout:g} s"}
        except BaseException:  # Ctrl-C: the child has its own session and would not see it
            self.kill()
            raise
        if line is None:
            return {"error": self._exit_reason()}
        self.started_up = True
        return json.loads(line)

    def _exit_reason(self) -> str:
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        self.log.flush()
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {code}"

    def kill(self) -> None:
        """Kill the child and, on POSIX, every process of its group (compiler workers...)."""
        if self.own_group:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.kill()
        self.process.wait()
        self.closed = True
        self._close_files()

    def close(self) -> None:
        """Ask the child to quit (killed if it does not within 30 s)."""
        if self.closed:
            return
        try:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def _close_files(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.log.close()


def _add_comparisons(
    rows: list[dict[str, Any]], folder: Path, flops: dict[int, float], peak: float, int8_peak: float | None = None
) -> None:
    """Speed-up over the training form (same size and batch), share of the machine limit (float32;
    and int8 for the INT8 backend), and the maps' relative error against the training form (or the
    fused form without it)."""
    by_key = {(r["backend"], r["image_size"], r["batch"]): r for r in rows}
    for row in rows:
        size = row["image_size"]
        base = by_key.get(("eager", size, row["batch"]))
        row["speedup_vs_eager"] = row["images_per_second"] / base["images_per_second"] if base else None
        row["fraction_of_fp32_limit"] = row["images_per_second"] * flops[size] / peak
        if row["backend"] == "openvino-int8" and int8_peak:
            row["fraction_of_int8_limit"] = row["images_per_second"] * flops[size] / int8_peak
        reference = next(
            (folder / f"{b}_{size}.npz" for b in ("eager", "fused") if (folder / f"{b}_{size}.npz").is_file()), None
        )
        mine = folder / f"{row['backend']}_{size}.npz"
        if reference is not None and mine.is_file():
            from minimaxad.inference.export import relative_error

            ref, out = np.load(reference), np.load(mine)
            row["map_relative_error"] = relative_error(out["maps"], ref["maps"])
            row["score_relative_error"] = relative_error(out["scores"], ref["scores"])
            row["compared_with"] = reference.name.split("_")[0]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The benchmark's rows as a fixed-width text table, one line per backend, size and batch."""
    header = (
        f"{'backend':<15}{'size':>5}{'batch':>6}{'img/s':>9}{'vs eager':>9}{'% limit':>8}"
        f"{'median ms':>11}{'p95 ms':>9}{'peak MB':>9}{'1st call s':>11}{'map err':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        speedup = f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else "-"
        error = f"{r['map_relative_error']:.1e}" if r.get("map_relative_error") is not None else "-"
        memory = f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") else "-"
        lines.append(
            f"{r['backend']:<15}{r['image_size']:>5}{r['batch']:>6}{r['images_per_second']:>9.2f}"
            f"{speedup:>9}{100 * r['fraction_of_fp32_limit']:>7.0f}%{r['latency_median_ms']:>11.1f}"
            f"{r['latency_p95_ms']:>9.1f}{memory:>9}{r['first_call_s']:>11.1f}{error:>9}"
        )
    return "\n".join(lines)


# -- tiled photos -------------------------------------------------------------------------------
def parse_photo_size(text: str) -> tuple[int, int]:
    """``"2448x2048"`` -> ``(2448, 2048)`` (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--photo-size {text!r}: expected WIDTHxHEIGHT, e.g. 2592x1944 (5 MP)") from None
    if width < 1 or height < 1:
        raise ValueError(f"--photo-size {text!r}: sides must be positive")
    return width, height


def run_tiled_benchmark(
    backends: Sequence[str] | None = None,
    *,
    tile_size: int,
    photo_size: tuple[int, int] = (2592, 1944),
    tile_stride: int | None = None,
    backbone: str = "unireplknet_n",
    checkpoint: str | None = None,
    batch_sizes: Sequence[int] = (16,),
    device: str = "auto",
    seconds: float = 3.0,
    threads: int | None = None,
    output: Path | None = Path("benchmark.json"),
    echo=print,
) -> dict[str, Any]:
    """Photos/s and tiles/s of tiled inference on one ``photo_size`` photo (already decoded), for
    each backend and tile batch size, and where the time goes: cutting the photo into normalised
    tiles, the network, and stitching + smoothing + scoring the photo's map (timed on the network's
    own maps, so the share of stitching is that of a real run). Runs in this process."""
    from minimaxad.inference.backends import available_backends
    from minimaxad.inference.predict import Predictor
    from minimaxad.tiling import Tiling, run_tiled

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    model, checkpoint_size, top_ratio = build_model(backbone, checkpoint)
    tiling = Tiling(tile_size, tile_stride, image_size=checkpoint_size or tile_size)
    width, height = photo_size
    rng = np.random.default_rng(0)
    from PIL import Image

    photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    n_tiles = tiling.count(width, height)
    name = checkpoint or f"{backbone} (random weights)"
    echo(
        f"minimaxad benchmark: {name}, tiled: a {width}x{height} photo ({width * height / 1e6:.1f} MP) in "
        f"{n_tiles} tiles, {tiling.describe()}; torch {torch.__version__}, {dev} "
        f"({torch.get_num_threads()} threads, {cpu_name()})"
    )
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for backend in list(backends) if backends else [b for b in available_backends(dev) if b != "eager"]:
        try:
            predictor = Predictor(
                model,  # the backend makes its own fused copy
                image_size=tiling.image_size,
                top_ratio=top_ratio,
                device=dev,
                backend=backend,
                tiling=tiling,
            )
        except Exception as exc:  # a backend that cannot run here is listed, the others measured
            failures[backend] = f"{type(exc).__name__}: {exc}"
            echo(f"  {backend}: not measured: {failures[backend]}")
            continue
        for batch in batch_sizes:
            predictor.predict([photo], batch_size=batch)  # warm-up: compilation, allocations
            runs, elapsed = _repeat(
                lambda run=predictor, b=batch: run.predict([photo], batch_size=b), dev, seconds, warmup=1
            )
            started = time.perf_counter()
            tiled = predictor.tiler.cut(photo)
            cut_s = time.perf_counter() - started
            maps = []
            started = time.perf_counter()
            for i in range(0, n_tiles, batch):
                maps.append(predictor.backend(tiled.tiles[i : i + batch])[0])
            network_s = time.perf_counter() - started
            all_maps = torch.cat(maps)
            started = time.perf_counter()
            list(run_tiled([tiled], lambda t: all_maps, batch_size=n_tiles, top_ratio=top_ratio, blend=tiling.blend))
            stitch_s = time.perf_counter() - started
            photos_per_second = runs / elapsed
            rows.append(
                {
                    "backend": backend,
                    "photo": f"{width}x{height}",
                    "tile_size": tile_size,
                    "tile_stride": tiling.tile_stride,
                    "tiles_per_photo": n_tiles,
                    "batch": batch,
                    "photos_per_second": photos_per_second,
                    "tiles_per_second": photos_per_second * n_tiles,
                    "cut_ms": 1e3 * cut_s,
                    "network_ms": 1e3 * network_s,
                    "stitch_ms": 1e3 * stitch_s,
                    "stitch_share": stitch_s / (cut_s + network_s + stitch_s),
                }
            )
    header = f"{'backend':<15}{'batch':>6}{'photos/s':>10}{'tiles/s':>9}{'cut ms':>8}{'network ms':>11}{'stitch ms':>10}{'stitch %':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['backend']:<15}{r['batch']:>6}{r['photos_per_second']:>10.3f}{r['tiles_per_second']:>9.1f}"
            f"{r['cut_ms']:>8.0f}{r['network_ms']:>11.0f}{r['stitch_ms']:>10.0f}{100 * r['stitch_share']:>8.1f}%"
        )
    echo("\n".join(lines))
    report = {
        "model": name,
        "tiling": tiling.to_dict(),
        "photo_size": [width, height],
        "rows": rows,
        "not_measured": failures,
    }
    if output is not None:
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
        echo(f"results: {output}")
    return report


# -- sizes and training speed (kept from the first benchmark) --------------------------------------
def model_sizes(model: MiniMaxAD) -> dict[str, float]:
    """Parameter counts of the encoder and of the trained part, and the trained part's size in MB."""
    return {
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
        "trainable_mb": sum(t.numel() * t.element_size() for t in model.trainable_state_dict().values()) / 1e6,
    }


def training_images_per_second(
    backbone: str, batch: int, size: int, device: torch.device, min_seconds: float = 3.0
) -> float:
    """Training steps (forward, ADC loss, backward, AdamW) images/second."""
    model = MiniMaxAD(backbone).train().to(device)
    optimizer = build_optimizer(model.trainable_parameters())
    x = torch.randn(batch, 3, size, size, device=device)

    def step():
        encoder_features, decoder_features = model(x)
        loss = adc_loss(encoder_features, decoder_features, size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    runs, elapsed = _repeat(step, device, min_seconds, warmup=1)
    return runs * batch / elapsed


def print_training_table(
    backbones: Sequence[str],
    size: int,
    batches: Sequence[int],
    device: str = "auto",
    min_seconds: float = 3.0,
    echo=print,
) -> list[dict[str, Any]]:
    """Sizes and training images/second of each backbone."""
    dev = resolve_device(device)
    echo(f"training speed, {size} px, {dev}:")
    echo(f"{'backbone':<18}{'encoder':>9}{'trainable':>11}{'MB':>7}{'batch':>7}{'training img/s':>16}")
    rows = []
    for name in backbones:
        sizes = model_sizes(MiniMaxAD(name))
        for batch in batches:
            rate = training_images_per_second(name, batch, size, dev, min_seconds)
            echo(
                f"{name:<18}{sizes['encoder_params'] / 1e6:>8.2f}M{sizes['trainable_params'] / 1e6:>10.2f}M"
                f"{sizes['trainable_mb']:>7.1f}{batch:>7}{rate:>16.2f}"
            )
            rows.append(dict(backbone=name, batch=batch, training=rate, **sizes))
    return rows


def _child_main(argv: Sequence[str]) -> int:
    """A backend's child process: JSON commands on stdin (``setup``, ``measure``, ``memory``,
    ``quit``), one JSON reply per line on the original stdout; whatever else is printed (runtimes'
    logs, progress bars) goes to stderr, so that it cannot be mistaken for a reply."""
    (spec_path,) = argv
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # fd 1 (C libraries included) now writes to stderr
    sys.stdout = sys.stderr
    spec = json.loads(Path(spec_path).read_text())
    worker = BackendWorker(spec)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        try:
            if command["cmd"] == "setup":
                reply = worker.setup(int(command["size"]))
            elif command["cmd"] == "measure":
                reply = worker.measure(int(command["batch"]), float(command["seconds"]))
            elif command["cmd"] == "memory":
                reply = worker.memory()
            else:
                reply = {"error": f"unknown command {command['cmd']!r}"}
        except Exception as exc:  # reported as this backend's reason; the others go on
            reply = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        replies.write(json.dumps(reply) + "\n")
    worker.backend = None
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
