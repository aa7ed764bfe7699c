"""The training loop of MiniMaxAD, the authors' protocol, written to be read top to bottom.

Frozen encoder in eval mode; bottleneck + decoder trained with AdamW and an ExponentialLR stepped
once per epoch; the loss of the chosen variant; results from the last epoch. The data order of
every epoch depends only on (seed, epoch), so ``--resume`` from an epoch checkpoint continues to
the same weights as an uninterrupted run.

Under torchrun the same loop runs in every process with a DistributedDataParallel model, each
process on its slice of every global batch (:mod:`minimaxad.engine.distributed`); rank 0 alone
logs, writes checkpoints and calibrates thresholds.
"""

from __future__ import annotations

import json
import logging
import math
import os
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
from minimaxad.engine.distributed import (
    DistributedContext, EpochBatchSampler, broadcast_object, convert_sync_batchnorm, current_context,
    distributed_loss, epoch_seed, global_loss_value, revert_sync_batchnorm, training_device,
)
from minimaxad.engine.scoring import resolve_device, run_dataset
from minimaxad.engine.thresholds import calibrate_thresholds
from minimaxad.losses import compute_loss
from minimaxad.models import MiniMaxAD

log = logging.getLogger("minimaxad")

RANDOM_ENCODER_WARNING = (
    "ENCODER WEIGHTS: none -> the encoder is RANDOMLY initialised. Results are NOT comparable "
    "to the paper (which uses the ImageNet UniRepLKNet weights)."
)

# A folder: each process appends the images of each of its steps to rank<N>.jsonl there (to check
# the sharding of a distributed run; written outside the run folder, by every rank).
TRACE_ENV = "MINIMAXAD_TRACE_BATCHES"


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
    context: DistributedContext | None = None,
) -> TrainResult:
    """Train one model on ``train_set``; calibrate thresholds on ``holdout_set`` (or, without
    one, on the training images); write ``checkpoint.pt`` (final) and ``last.pt`` (resumable).

    ``context`` (default: the current process group, if any) makes this one of several processes:
    every rank trains, only rank 0 writes files and calibrates; the other ranks return a result
    with their (identical) model and no thresholds.
    """
    context = context or current_context()
    main = context.is_main
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    device = training_device(resolve_device(config.device), context)
    seed_everything(config.seed)
    model = build_model(config)

    start_epoch, step, training = 0, 0, None
    last_path = output_dir / "last.pt"
    state = read_checkpoint(last_path) if main and resume and last_path.is_file() else None
    state = broadcast_object(state, context, device)  # rank 0 read it: no shared disk needed
    if state is not None:
        _check_resume_compatible(state, config)
        load_model_state(model, state)
        training = state["training_state"]
        restore_rng_state(training["rng"])
        start_epoch, step = training["epoch"], training["step"]
        log.info("resumed from %s at epoch %d, step %d", last_path, start_epoch, step)
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", last_path)

    if context.enabled and config.sync_batchnorm:
        convert_sync_batchnorm(model, device)  # before the optimiser: it makes new parameters
    model.to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config.precision == "fp16")
    if training is not None:
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
    network = model
    if context.enabled:
        # harmless: depthwise kernels (C, 1, k, k) have a size-1 dim whose stride differs from DDP's bucket
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epochs_needed = math.ceil(total_steps / steps_per_epoch)
    log.info("training %s on %d images (%s), %d step(s) of batch %d, loss %s, device %s",
             model.backbone, len(train_set), ", ".join(categories), total_steps, config.batch_size,
             config.loss, device)
    if context.enabled:
        log.info("distributed: %d processes (%s), %s BatchNorm statistics, ADC thresholds %s",
                 context.world_size, context.backend, "global-batch" if config.sync_batchnorm else "per-rank",
                 config.adc_sync)

    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="train", unit="step",
                   dynamic_ncols=True)
    trace = _open_trace(context)
    loss_value, nonfinite_in_a_row, seen_images, started = float("nan"), 0, 0, time.perf_counter()
    empty_images = None
    epoch = start_epoch
    for epoch in range(start_epoch, epochs_needed):
        if step >= total_steps:
            break
        network.train()  # the encoder stays in eval mode (MiniMaxAD.train)
        sampler = EpochBatchSampler(len(train_set), config.batch_size, seed=config.seed, epoch=epoch,
                                    rank=context.rank, world_size=context.world_size)
        global_sizes = [len(b) for b in sampler.global_batches()]
        local_batches = list(sampler)
        loader = DataLoader(train_set, batch_sampler=local_batches, num_workers=config.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            collate_fn=_collate_or_empty,
                            generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch)))
        for index, batch in enumerate(loader):
            if batch is None:  # this rank's slice of a short last batch is empty: take part anyway
                if empty_images is None:
                    empty_images = torch.zeros((0, *train_set[0]["image"].shape))
                batch = {"image": empty_images, "path": []}
            images = batch["image"].to(device, non_blocking=True)
            if config.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, config.precision):
                encoder_features, decoder_features = network(images)
            # the loss (quantiles, cosine) in float32 whatever the forward precision
            encoder_features = [f.float() for f in encoder_features]
            decoder_features = [f.float() for f in decoder_features]
            if context.enabled:
                loss = distributed_loss(config.loss, encoder_features, decoder_features, images.shape[-1],
                                        global_batch=global_sizes[index], p_hard=config.p_hard,
                                        p_lim=config.p_lim, adc_mode=config.adc_sync)
            else:
                loss = compute_loss(config.loss, encoder_features, decoder_features, images.shape[-1],
                                    p_hard=config.p_hard, p_lim=config.p_lim)
            value = global_loss_value(loss, context)  # the same on every rank: they decide alike
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(value):
                if context.enabled:
                    scaler.scale(loss).backward()  # every rank must join DDP's gradient all-reduce
                    optimizer.zero_grad(set_to_none=True)
                nonfinite_in_a_row += 1
                if main:
                    warnings.warn(f"non-finite loss ({value}) at step {step}: step skipped", RuntimeWarning)
                log.warning("non-finite loss at step %d (%d in a row): step skipped", step, nonfinite_in_a_row)
                if nonfinite_in_a_row >= config.max_nonfinite_steps:
                    raise TrainingError(
                        f"the loss was non-finite for {nonfinite_in_a_row} steps in a row (last at step {step}); "
                        f"lower the learning rate (--lr, now {config.lr}) or use --precision fp32"
                    )
            else:
                nonfinite_in_a_row = 0
                scaler.scale(loss).backward()
                if trace is not None:
                    _trace_step(trace, context, epoch, step, local_batches[index], batch, value, model)
                scaler.step(optimizer)
                scaler.update()
                loss_value = value
            step += 1
            seen_images += global_sizes[index]
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
        if main and config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0 and step < total_steps:
            _save_resumable(last_path, model, config, categories, optimizer, scheduler, epoch + 1, step)
    if bar is not None:
        bar.close()
    if trace is not None:
        trace.close()
    elapsed = time.perf_counter() - started
    rate = seen_images / elapsed if elapsed > 0 else float("nan")
    revert_sync_batchnorm(model)  # plain BatchNorm2d again: what checkpoints and re-parameterization expect
    checkpoint_path = output_dir / "checkpoint.pt"
    if not main:
        return TrainResult(model, checkpoint_path, step, epoch + 1, loss_value, rate, {})
    _save_resumable(last_path, model, config, categories, optimizer, scheduler, epochs_needed, step)

    thresholds = calibrate(model, config, holdout_set, train_set, device)
    checkpoint = build_checkpoint(model, config.to_dict(), categories=categories, thresholds=thresholds)
    checkpoint_path = save_checkpoint(checkpoint_path, checkpoint)
    log.info("saved %s (%d steps, %.1f images/s)", checkpoint_path, step, rate)
    return TrainResult(model, checkpoint_path, step, epoch + 1, loss_value, rate, thresholds)


def _collate_or_empty(items):
    """``collate``, or None for a rank's empty slice of the last batch (``collate`` refuses it)."""
    return collate(items) if items else None


def _trace_step(trace, context: DistributedContext, epoch: int, step: int, indices: list[int], batch: dict,
                loss: float, model: MiniMaxAD) -> None:
    """One line of the batch trace: this rank's images, the global loss and gradient norm (after
    DDP's all-reduce the gradients are the same on every rank)."""
    grads = [p.grad.detach().float().pow(2).sum() for p in model.trainable_parameters() if p.grad is not None]
    grad_norm = float(torch.stack(grads).sum().sqrt()) if grads else 0.0
    trace.write(json.dumps({"rank": context.rank, "epoch": epoch, "step": step, "indices": indices,
                            "paths": list(batch.get("path", [])), "loss": loss, "grad_norm": grad_norm}) + "\n")
    trace.flush()


def _open_trace(context: DistributedContext):
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return open(Path(folder) / f"rank{context.rank}.jsonl", "a")


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
