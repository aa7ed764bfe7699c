"""Model size and speed measurements (used by ``minimaxad benchmark`` and ``benchmarks/``)."""

from __future__ import annotations

import copy
import time
from typing import Sequence

import torch

from minimaxad.engine.inference import infer_batch, resolve_device
from minimaxad.losses import adc_loss
from minimaxad.models import MiniMaxAD


def _timed(fn, device: torch.device, min_seconds: float, warmup: int = 2) -> tuple[int, float]:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= 3:
            return runs, elapsed


def inference_images_per_second(model: MiniMaxAD, batch: int, size: int, device: torch.device,
                                 min_seconds: float = 3.0) -> float:
    """Full inference (encoder, bottleneck, decoder, smoothed map, image score) images/second."""
    model = model.eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    runs, elapsed = _timed(lambda: infer_batch(model, x, size), device, min_seconds)
    return runs * batch / elapsed


def training_images_per_second(backbone: str, batch: int, size: int, device: torch.device,
                               min_seconds: float = 3.0) -> float:
    """Training steps (forward, ADC loss, backward, AdamW) images/second."""
    model = MiniMaxAD(backbone).train().to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.005, weight_decay=1e-5)
    x = torch.randn(batch, 3, size, size, device=device)

    def step():
        encoder_features, decoder_features = model(x)
        loss = adc_loss(encoder_features, decoder_features, size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    runs, elapsed = _timed(step, device, min_seconds, warmup=1)
    return runs * batch / elapsed


def model_sizes(model: MiniMaxAD) -> dict[str, float]:
    return {
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
        "trainable_mb": sum(t.numel() * t.element_size() for t in model.trainable_state_dict().values()) / 1e6,
    }


def print_speed_table(backbones: Sequence[str], size: int, batches: Sequence[int], device: str = "auto",
                      min_seconds: float = 3.0, train: bool = False) -> list[dict]:
    """Print sizes and images/second of the training form and the fused form (ratio to the
    training form measured in the same run); returns the rows."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    threads = f"{torch.get_num_threads()} CPU threads" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    print(f"minimaxad benchmark: torch {torch.__version__}, {dev} ({threads}), {size} px, float32")
    header = (f"{'backbone':<18}{'encoder':>9}{'trainable':>11}{'MB':>7}{'batch':>7}"
              f"{'train-form img/s':>18}{'fused img/s':>13}{'ratio':>8}")
    if train:
        header += f"{'training img/s':>16}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in backbones:
        model = MiniMaxAD(name).eval()
        sizes = model_sizes(model)
        fused = copy.deepcopy(model).reparameterize()
        for batch in batches:
            base = inference_images_per_second(model, batch, size, dev, min_seconds)
            fast = inference_images_per_second(fused, batch, size, dev, min_seconds)
            row = dict(backbone=name, batch=batch, train_form=base, fused=fast, ratio=fast / base, **sizes)
            line = (f"{name:<18}{sizes['encoder_params'] / 1e6:>8.2f}M{sizes['trainable_params'] / 1e6:>10.2f}M"
                    f"{sizes['trainable_mb']:>7.1f}{batch:>7}{base:>18.2f}{fast:>13.2f}{fast / base:>7.2f}x")
            if train:
                row["training"] = training_images_per_second(name, batch, size, dev, min_seconds)
                line += f"{row['training']:>16.2f}"
            print(line, flush=True)
            rows.append(row)
    return rows
