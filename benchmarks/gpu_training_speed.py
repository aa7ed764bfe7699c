"""Training images/second of our step on one device, per precision and memory layout, as JSON.

    python benchmarks/gpu_training_speed.py --device cuda --output train_speed.json
    python benchmarks/gpu_training_speed.py --device cpu --variants unireplknet_f --size 64 --batch 2 --steps 2

Used by benchmarks/gpu_check.sh. One row per setting: fp32; bf16 autocast; bf16 autocast with
channels-last memory; the same compiled with ``torch.compile`` (``--compile``). A step is the
trainer's: forward under :func:`minimaxad.engine.trainer.autocast_context`, ADC loss in float32,
backward, AdamW. Rows record images/second, the first steps' time (compilation) and the peak
device memory (CUDA). A failing setting is recorded with its error and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from minimaxad.engine.trainer import autocast_context
from minimaxad.losses import adc_loss
from minimaxad.models import MiniMaxAD


def measure(
    backbone: str,
    size: int,
    batch: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    compile_model: bool,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = MiniMaxAD(backbone).train().to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    network = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=5e-3, weight_decay=1e-5)

    def step() -> float:
        with autocast_context(device, precision):
            encoder_features, decoder_features = network(images)
        loss = adc_loss([f.float() for f in encoder_features], [f.float() for f in decoder_features], size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # .item() synchronises the device

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    elapsed = time.perf_counter() - start
    row = {
        "backbone": backbone,
        "image_size": size,
        "batch": batch,
        "precision": precision,
        "channels_last": channels_last,
        "compiled": compile_model,
        "steps": steps,
        "images_per_second": batch * steps / elapsed,
        "warmup_s": first,
        "last_loss": losses[-1],
    }
    if device.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if not all(torch.isfinite(torch.tensor(losses))):
        raise RuntimeError(f"non-finite loss in {row}")
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", nargs="+", default=["unireplknet_n"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also the bf16 channels-last step compiled")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    settings = [("fp32", False, False), ("bf16", False, False), ("bf16", True, False)]
    if args.compile:
        settings.append(("bf16", True, True))
    rows, failed = [], False
    for backbone in args.variants:
        for precision, channels_last, compiled in settings:
            try:
                row = measure(
                    backbone, args.size, args.batch, device, precision, channels_last, compiled, args.steps, args.warmup
                )
            except Exception as error:  # record it, keep measuring the others, fail at the end
                failed = True
                row = {
                    "backbone": backbone,
                    "precision": precision,
                    "channels_last": channels_last,
                    "compiled": compiled,
                    "error": f"{type(error).__name__}: {error}",
                }
                traceback.print_exc()
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.output.write_text(
        json.dumps(
            {
                "device": str(device),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
