"""The training loop of MiniMaxAD, the authors' protocol, written to be read top to bottom.

Frozen encoder in eval mode; bottleneck + decoder trained with AdamW and an ExponentialLR stepped
once per epoch; the loss of the chosen variant; results from the last epoch. The data order of
every epoch depends only on (seed, epoch), so ``--resume`` from an epoch checkpoint continues to
the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from minimaxad.data.loader import collate
from minimaxad.engine.checkpoint import (
    build_checkpoint, load_model_state, read_checkpoint, restore_rng_state, rng_state, save_checkpoint,
)
from minimaxad.engine.config import RunConfig
from minimaxad.engine.inference import resolve_device, run_dataset
from minimaxad.engine.thresholds import calibrate_thresholds
from minimaxad.losses import compute_loss
from minimaxad.models import MiniMaxAD

log = logging.getLogger("minimaxad")

RANDOM_ENCODER_WARNING = (
    "ENCODER WEIGHTS: none -> the encoder is RANDOMLY initialised. Results are NOT comparable "
    "to the paper (which uses the ImageNet UniRepLKNet weights)."
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""


@dataclass
class TrainResult:
    model: MiniMaxAD
    checkpoint_path: Path
    steps: int
    epochs_done: int
    final_loss: float
    images_per_second: float
    thresholds: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_model(config: RunConfig) -> MiniMaxAD:
    """The network with its encoder weights: a file, the hub (cache first), or random."""
    weights = config.encoder_weights
    if weights is None or str(weights).lower() == "none":
        log.warning(RANDOM_ENCODER_WARNING)
        return MiniMaxAD(config.backbone)
    return MiniMaxAD(config.backbone, encoder_weights=weights)


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; fp32 (a no-op context) everywhere else."""
    if precision == "fp32" or device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type="cuda", dtype=dtype)


def train(
    config: RunConfig,
    train_set,
    holdout_set,
    output_dir: Path,
    *,
    categories: list[str],
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train one model on ``train_set``; calibrate thresholds on ``holdout_set`` (or, without
    one, on the training images); write ``checkpoint.pt`` (final) and ``last.pt`` (resumable)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config.precision == "fp16")

    start_epoch, step = 0, 0
    last_path = output_dir / "last.pt"
    if resume and last_path.is_file():
        state = read_checkpoint(last_path)
        _check_resume_compatible(state, config)
        load_model_state(model, state)
        training = state["training_state"]
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        restore_rng_state(training["rng"])
        start_epoch, step = training["epoch"], training["step"]
        log.info("resumed from %s at epoch %d, step %d", last_path, start_epoch, step)
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", last_path)

    model.to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epochs_needed = math.ceil(total_steps / steps_per_epoch)
    log.info("training %s on %d images (%s), %d step(s) of batch %d, loss %s, device %s",
             model.backbone, len(train_set), ", ".join(categories), total_steps, config.batch_size,
             config.loss, device)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="train", unit="step",
                   dynamic_ncols=True)
    loss_value, nonfinite_in_a_row, seen_images, started = float("nan"), 0, 0, time.perf_counter()
    epoch = start_epoch
    for epoch in range(start_epoch, epochs_needed):
        if step >= total_steps:
            break
        model.train()  # the encoder stays in eval mode (MiniMaxAD.train)
        order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)  # data order of this epoch
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=order,
                            num_workers=config.workers, pin_memory=device.type == "cuda",
                            drop_last=False, persistent_workers=False, collate_fn=collate)
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if config.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, config.precision):
                encoder_features, decoder_features = model(images)
            # the loss (quantiles, cosine) in float32 whatever the forward precision
            loss = compute_loss(config.loss, [f.float() for f in encoder_features],
                                [f.float() for f in decoder_features], images.shape[-1],
                                p_hard=config.p_hard, p_lim=config.p_lim)
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                nonfinite_in_a_row += 1
                warnings.warn(f"non-finite loss ({loss.item()}) at step {step}: step skipped", RuntimeWarning)
                log.warning("non-finite loss at step %d (%d in a row): step skipped", step, nonfinite_in_a_row)
                if nonfinite_in_a_row >= config.max_nonfinite_steps:
                    raise TrainingError(
                        f"the loss was non-finite for {nonfinite_in_a_row} steps in a row (last at step {step}); "
                        f"lower the learning rate (--lr, now {config.lr}) or use --precision fp32"
                    )
            else:
                nonfinite_in_a_row = 0
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_value = loss.item()
            step += 1
            seen_images += images.shape[0]
            if bar is not None:
                rate = seen_images / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}", img_s=f"{rate:.1f}")
                bar.update(1)
            if step >= total_steps:
                break
        epoch_finished = step % steps_per_epoch == 0 or step >= total_steps
        if epoch_finished:
            scheduler.step()  # ExponentialLR once per epoch
        log.info("epoch %d done: step %d, loss %.5f, lr %.3g", epoch, step, loss_value, scheduler.get_last_lr()[0])
        if config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0 and step < total_steps:
            _save_resumable(last_path, model, config, categories, optimizer, scheduler, epoch + 1, step)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    rate = seen_images / elapsed if elapsed > 0 else float("nan")
    _save_resumable(last_path, model, config, categories, optimizer, scheduler, epochs_needed, step)

    thresholds = calibrate(model, config, holdout_set, train_set, device)
    checkpoint = build_checkpoint(model, config.to_dict(), categories=categories, thresholds=thresholds)
    checkpoint_path = save_checkpoint(output_dir / "checkpoint.pt", checkpoint)
    log.info("saved %s (%d steps, %.1f images/s)", checkpoint_path, step, rate)
    return TrainResult(model, checkpoint_path, step, epoch + 1, loss_value, rate, thresholds)


def calibrate(model: MiniMaxAD, config: RunConfig, holdout_set, train_set, device) -> dict[str, Any]:
    """Thresholds from held-out normal images; without them, from (part of) the training images."""
    if holdout_set is not None and len(holdout_set) > 0:
        dataset, source = holdout_set, "normal images held out of training"
    else:
        n = min(len(train_set), config.val_max_images)
        dataset = train_set.subset(range(n)) if hasattr(train_set, "subset") else train_set
        source = "TRAINING images (no held-out split: thresholds are likely too low; use --val-fraction)"
    outputs = run_dataset(model, dataset, top_ratio=config.top_ratio, batch_size=config.batch_size,
                          device=device, workers=config.workers, collect_masks=False)
    return calibrate_thresholds(outputs.scores, outputs.maps, image_fpr=config.image_fpr,
                                pixel_fpr=config.pixel_fpr, source=source, seed=config.seed,
                                categories=outputs.categories)


def _save_resumable(path, model, config, categories, optimizer, scheduler, epoch, step) -> None:
    training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "rng": rng_state(), "epoch": epoch, "step": step}
    save_checkpoint(path, build_checkpoint(model, config.to_dict(), categories=categories,
                                           training_state=training_state))


# settings that must not change between a run and its resumption
_RESUME_KEYS = ("backbone", "loss", "image_size", "crop_size", "batch_size", "lr", "seed", "epochs",
                "weight_decay", "lr_gamma", "format", "categories", "unified")


def _check_resume_compatible(state: dict[str, Any], config: RunConfig) -> None:
    saved = state.get("config") or {}
    current = config.to_dict()
    changed = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in _RESUME_KEYS
               if k in saved and _norm(saved.get(k)) != _norm(current.get(k))]
    if changed:
        raise TrainingError(
            f"cannot --resume {state.get('path')}: the run was started with other settings ({'; '.join(changed)}). "
            f"Use the same options, or a new --output folder"
        )
    if state.get("training_state") is None:
        raise TrainingError(f"{state.get('path')} holds no training state to resume from")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value
