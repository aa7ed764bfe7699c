"""Throughput and latency of ``minimaxad serve`` under load, against the offline backend speed.

Starts ``minimaxad serve`` on loopback (its own process), drives it with 1, 4 and 16 concurrent
clients (each client one keep-alive connection; a fixed number of requests per level, each one
256 px PNG), and prints requests/second and p50/p95/p99 latency. In the same run, the offline
speed of the same backend (``backend(batch)`` on ready tensors, as ``minimaxad benchmark`` times
it) is measured at batch 1 and at ``--max-batch``, before and after the load runs (the mean is the
baseline), and the ratios are printed:

* throughput with 16 clients / offline throughput at batch ``--max-batch`` (target >= 0.90);
* p50 latency with 1 client - offline batch-1 latency (target <= 10 ms).

    python benchmarks/bench_serve.py                                # unireplknet_n, 256 px, random weights
    python benchmarks/bench_serve.py --backbone unireplknet_a --requests 16 32 64
    python benchmarks/bench_serve.py --checkpoint runs/bottle/checkpoint.pt --backend onnxruntime

The load generator shares the machine with the server: on a small CPU it takes cores from it
(the printed figures say how many cores there were and how loaded the machine was).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minimaxad.data.synthetic import render_sample
from minimaxad.inference.predict import Predictor


def random_checkpoint(backbone: str, image_size: int, folder: Path) -> Path:
    """A checkpoint of a random-weight model (speed does not depend on the weights)."""
    from minimaxad.engine.checkpoint import build_checkpoint, save_checkpoint
    from minimaxad.inference.benchmark import randomize_batchnorm
    from minimaxad.models import MiniMaxAD

    torch.manual_seed(0)
    model = MiniMaxAD(backbone).eval()
    randomize_batchnorm(model)
    state = build_checkpoint(model, {"image_size": image_size, "top_ratio": 0.01}, categories=["bench"])
    return save_checkpoint(folder / "checkpoint.pt", state)


def photos(n: int, size: int) -> list[bytes]:
    """n distinct ``size`` px PNGs of the synthetic scenes."""
    out = []
    for i in range(n):
        pixels, _ = render_sample(("weave", "washer", "grain")[i % 3], seed=1, index=i, image_size=size, split="test")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def offline(predictor: Predictor, images: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(images/second, median latency in ms) of ``backend(images)`` on ready tensors, called from
    a worker thread as the service's batcher calls it (PyTorch's intra-op threading differs
    between the main thread and others; on an overloaded CPU the difference is large)."""
    times: list[float] = []

    def run() -> None:
        predictor.backend(images)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            predictor.backend(images)
            predictor.backend.synchronize()
            times.append(time.perf_counter() - started)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    median = statistics.median(times)
    return len(images) / median, 1e3 * median


def load(port: int, bodies: list[bytes], clients: int, requests: int) -> dict[str, float]:
    """``requests`` POSTs from ``clients`` threads (one keep-alive connection each)."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            started = time.perf_counter()
            conn.request("POST", "/v1/predict", body=bodies[i % len(bodies)], headers={"Content-Type": "image/png"})
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - started
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                else:
                    failures.append(f"{response.status}: {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) failed, e.g. {failures[0]}")
    ms = 1e3 * np.asarray(latencies)
    return {
        "clients": clients,
        "requests": requests,
        "throughput": requests / wall,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
    }


def metric_sum(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def start_server(checkpoint: Path, backend: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minimaxad",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--backend",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(max_wait_ms),
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/ready")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not get ready in 10 minutes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: random weights of --backbone)")
    parser.add_argument("--backbone", default="unireplknet_n")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=[24, 48, 96],
        help="requests per load level (one number per --clients entry)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="offline timings per batch size")
    parser.add_argument("--threads", type=int, help="PyTorch threads, here and in the server (default: PyTorch's)")
    parser.add_argument("--output", help="JSON file for the figures")
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("give one --requests number per --clients entry")

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by PyTorch in the server process
    with tempfile.TemporaryDirectory(prefix="minimaxad-bench-serve-") as tmp:
        checkpoint = (
            Path(args.checkpoint) if args.checkpoint else random_checkpoint(args.backbone, args.image_size, Path(tmp))
        )
        predictor = Predictor.from_checkpoint(checkpoint, backend=args.backend)
        size = predictor.transform.output_size[0]
        bodies = photos(8, size)
        # the offline baseline runs on the same photos, preprocessed (decoding is the service's extra work)
        tensors, _ = predictor.preprocess(
            [Image.open(io.BytesIO(bodies[i % len(bodies)])) for i in range(args.max_batch)]
        )
        load_before = os.getloadavg()[0]
        print(
            f"bench_serve: {checkpoint if args.checkpoint else args.backbone + ' (random weights)'}, {size} px, "
            f"backend {predictor.backend.name} on {predictor.device}; {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads; load average {load_before:.1f}"
        )
        process, port = start_server(checkpoint, args.backend, args.max_batch, args.max_wait_ms)
        try:
            # offline and online alternate, so that a change in the machine's load hits both
            base: dict[int, list[tuple[float, float]]] = {1: [], args.max_batch: []}
            rows = []
            for batch in base:
                base[batch].append(offline(predictor, tensors[:batch], args.repeats))
            for clients, requests in zip(args.clients, args.requests):
                load(port, bodies, clients, min(requests, 2 * clients))  # warm the connections up
                batches = metric_sum(port, "minimaxad_batch_size_count")
                images = metric_sum(port, "minimaxad_batch_size_sum")
                row = load(port, bodies, clients, requests)
                batches = metric_sum(port, "minimaxad_batch_size_count") - batches
                row["mean_batch"] = (metric_sum(port, "minimaxad_batch_size_sum") - images) / max(batches, 1)
                rows.append(row)
            for batch in base:
                base[batch].append(offline(predictor, tensors[:batch], args.repeats))
        finally:
            process.terminate()
            process.wait(60)
        load_after = os.getloadavg()[0]

    offline_rate = {b: statistics.mean(r for r, _ in v) for b, v in base.items()}
    offline_ms = {b: statistics.mean(ms for _, ms in v) for b, v in base.items()}
    print(
        f"offline backend: batch 1 {offline_rate[1]:.2f} img/s ({offline_ms[1]:.1f} ms; runs "
        f"{', '.join(f'{ms:.1f}' for _, ms in base[1])}), batch {args.max_batch} "
        f"{offline_rate[args.max_batch]:.2f} img/s (runs "
        f"{', '.join(f'{r:.2f}' for r, _ in base[args.max_batch])})"
    )
    print(
        f"{'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'batch':>6} {'vs offline b1':>13} {'vs offline b' + str(args.max_batch):>14}"
    )
    for row in rows:
        print(
            f"{row['clients']:>7} {row['requests']:>8} {row['throughput']:>8.2f} {row['p50']:>8.1f} "
            f"{row['p95']:>8.1f} {row['p99']:>8.1f} {row['mean_batch']:>6.1f} "
            f"{row['throughput'] / offline_rate[1]:>13.2f} {row['throughput'] / offline_rate[args.max_batch]:>14.2f}"
        )
    single = next((r for r in rows if r["clients"] == 1), None)
    busy = next((r for r in rows if r["clients"] == max(args.clients)), None)
    if busy:
        ratio = busy["throughput"] / offline_rate[args.max_batch]
        print(f"{busy['clients']} clients: {ratio:.2f} x offline batch-{args.max_batch} throughput (target >= 0.90)")
    if single:
        extra = single["p50"] - offline_ms[1]
        print(f"1 client: p50 {single['p50']:.1f} ms = offline batch-1 latency + {extra:.1f} ms (target <= 10 ms)")
    print(f"load average: {load_before:.1f} before, {load_after:.1f} after")
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "offline": {str(b): v for b, v in base.items()},
                    "rows": rows,
                    "load_average": [load_before, load_after],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
