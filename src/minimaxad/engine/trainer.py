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
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from minimaxad.data.loader import collate
from minimaxad.engine.checkpoint import (
    build_checkpoint,
    load_model_state,
    read_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import (
    SAMPLERS,
    DataParallel,
    DistributedContext,
    EpochBatchSampler,
    authors_epoch_order,
    broadcast_object,
    current_context,
    epoch_seed,
    training_device,
)
from minimaxad.engine.resume import check_resume_compatible, data_fingerprint
from minimaxad.engine.scoring import resolve_device, run_dataset
from minimaxad.engine.thresholds import calibrate_thresholds
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
    """What :func:`train` returns, on every rank.

    ``images_per_second``: images of every rank per second, over the steps this call ran;
    ``thresholds``: the calibrated ones (empty on ranks other than 0, which do not calibrate).
    """

    model: MiniMaxAD
    checkpoint_path: Path
    steps: int
    epochs_done: int
    final_loss: float
    images_per_second: float
    thresholds: dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators (every device) with ``seed``."""
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


def adc_limit_batch_size(config: RunConfig) -> int | None:
    """The batch size of the ADC pixel limit: the nominal ``--batch-size`` (the authors compute
    ``num_lim`` once from it, so a short last batch is held to the full batch's limit), or None
    for the images actually in each batch (``adc_limit_batch="actual"``)."""
    if config.adc_limit_batch == "nominal":
        return config.batch_size
    if config.adc_limit_batch == "actual":
        return None
    raise ValueError(
        f"adc_limit_batch={config.adc_limit_batch!r}; expected 'nominal' (the authors' scripts) or 'actual'"
    )


def cpu_supports_bf16() -> bool:
    """AVX-512 BF16 or AMX: CPUs where oneDNN runs bfloat16 products natively (elsewhere bf16
    is emulated and slower than float32)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # older torch: read the CPU flags (Linux)
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


def build_optimizer(
    parameters, lr: float = 5e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-5
) -> torch.optim.AdamW:
    """The authors' AdamW (paper defaults), with PyTorch's fused kernel where it has one.

    The fused update is the same formula in one kernel per dtype instead of a dozen ``foreach``
    passes over every tensor: about 4x faster on CPU (5 ms against 20 ms a step for variant F),
    which is a quarter of a batch-1 step. It differs from the default only in rounding.
    """
    parameters = list(parameters)
    fused = bool(parameters) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA, bf16 autocast on CPUs with native bfloat16
    (:func:`cpu_supports_bf16`); fp32 (a no-op context) everywhere else. The loss is computed
    in float32 by the caller whatever the precision."""
    if precision == "bf16" and device.type == "cpu":
        if cpu_supports_bf16():
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        warnings.warn(
            "--precision bf16: this CPU has no AVX-512 BF16 or AMX; training in fp32 "
            "(bf16 would be emulated, slower than fp32)",
            stacklevel=2,
        )
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
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train one model on ``train_set``; calibrate thresholds on ``holdout_set`` (or, without
    one, on the training images); write ``checkpoint.pt`` (final) and ``last.pt`` (resumable).

    ``on_step(step, {"loss", "lr", "images_per_second"})`` is called after every step (the
    experiment loggers); images/s counts the whole step, data loading included.

    ``context`` (default: the current process group, if any) makes this one of several processes:
    every rank trains, only rank 0 writes files and calibrates; the other ranks return a result
    with their (identical) model and no thresholds.
    """
    run = TrainingRun(config, output_dir, categories, context or current_context())
    run.set_up(resume, data=_fingerprint_of(train_set))
    items = training_items(config, train_set)
    plan = run.plan(len(items))
    run.start_progress(plan, enabled=progress)
    for epoch in run.remaining_epochs(plan):
        step_started = time.perf_counter()
        for batch in run.batches(items, epoch):
            run.step(batch)
            if on_step is not None:
                now = time.perf_counter()
                on_step(
                    run.step_count,
                    {
                        "loss": run.loss_value,
                        "lr": run.optimizer.param_groups[0]["lr"],
                        "images_per_second": batch.global_size / max(now - step_started, 1e-9),
                    },
                )
                step_started = now
            if run.step_count >= plan.total_steps:
                break
        run.end_epoch(epoch, plan)
    return run.finish(plan, train_set, holdout_set)


@dataclass(frozen=True)
class StepPlan:
    """How many optimiser steps a run takes, and how they fall into epochs."""

    steps_per_epoch: int
    total_steps: int

    @property
    def epochs(self) -> int:
        """Epochs the steps span, the last one possibly partial (``--max-steps``)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def ends_epoch(self, step: int) -> bool:
        """A whole epoch is done (a run stopped mid-epoch by --max-steps has not finished it: the
        schedule steps when a resumed run completes it, so the learning rate stays in phase)."""
        return step % self.steps_per_epoch == 0

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batches of it done) after ``step`` optimiser steps."""
        return divmod(step, self.steps_per_epoch)


@dataclass
class Batch:
    """One step's images on this process, with what the loss and the trace need to know."""

    images: torch.Tensor
    global_size: int  # images in the whole (global) batch, over all processes
    indices: list[int]  # this process's dataset indices
    paths: list[str]


class TrainingRun:
    """The state of one training run and its named steps; :func:`train` is the loop over them.

    Distributed details (DDP, global-batch losses and BatchNorm) live in :class:`DataParallel`;
    only rank 0 (``self.main``) writes files.
    """

    def __init__(self, config: RunConfig, output_dir: Path, categories: list[str], context: DistributedContext) -> None:
        self.config, self.output_dir, self.categories, self.context = config, output_dir, categories, context
        self.main = context.is_main
        self.device = training_device(resolve_device(config.device), context)
        self.parallel = DataParallel(
            context, self.device, sync_batchnorm=config.sync_batchnorm, adc_mode=config.adc_sync
        )
        self.last_path = output_dir / "last.pt"
        self.epoch, self.step_count = 0, 0
        self._resume_batch = 0  # batches of the first epoch already done before a resume
        self.data: dict[str, Any] | None = None  # the training files' fingerprint (resume checks it)
        self.loss_value, self.nonfinite_in_a_row, self.seen_images = float("nan"), 0, 0
        self._bar = self._trace = self._empty_images = None
        self._authors_rng_state = torch.get_rng_state()  # set_up takes it after building the network
        self._started = time.perf_counter()

    # -- set-up and resume --------------------------------------------------------------------
    def set_up(self, resume: bool, data: dict[str, Any] | None = None) -> None:
        """Model, optimiser, schedule and scaler; continue from ``last.pt`` when resuming (with
        the same settings and the same training files, ``data``: see :mod:`~minimaxad.engine.resume`)."""
        config = self.config
        self.data = data
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if config.sampler not in SAMPLERS:
            raise ValueError(f"sampler={config.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        seed_everything(config.seed)
        self.model = build_model(config)
        # the global generator as the authors' scripts leave it after building their network: their
        # DataLoader's shuffle draws from it (--sampler authors); taken before a resume restores it
        self._authors_rng_state = torch.get_rng_state()
        training = self._read_resume_state(resume)
        self.parallel.prepare(self.model)  # before the optimiser: it may make new parameters
        self.model.to(self.device)
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(
            self.model.trainable_parameters(), lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and config.precision == "fp16")
        if training is not None:
            self.optimizer.load_state_dict(training["optimizer"])
            self.scheduler.load_state_dict(training["scheduler"])
        self.network = self.parallel.wrap(self.model)

    def _read_resume_state(self, resume: bool) -> dict[str, Any] | None:
        """Rank 0 reads ``last.pt`` and sends it to every rank (no shared disk needed)."""
        state = read_checkpoint(self.last_path) if self.main and resume and self.last_path.is_file() else None
        state = broadcast_object(state, self.context, self.device)
        if state is None:
            if resume:
                log.info("--resume: no %s yet, starting from scratch", self.last_path)
            return None
        check_resume_compatible(state, self.config, self.data, self.model.encoder_weights_id)
        load_model_state(self.model, state)
        training = state["training_state"]
        restore_rng_state(training["rng"])
        self.epoch, self.step_count = training["epoch"], training["step"]
        self._resume_batch = training.get("batch_in_epoch", 0)
        if self._resume_batch and self.config.augment and self.config.workers > 0:
            log.warning(
                "resuming mid-epoch with --workers > 0 and augmentation: the rest of epoch %d gets other "
                "random crops than an uninterrupted run (exact with --workers 0)",
                self.epoch,
            )
        log.info("resumed from %s at epoch %d, step %d", self.last_path, self.epoch, self.step_count)
        return training

    def plan(self, num_images: int) -> StepPlan:
        """``ceil(N/B)`` steps an epoch, ``floor(N/B)`` when the short last batch is dropped."""
        config = self.config
        if config.drop_last:
            if num_images < config.batch_size:
                raise TrainingError(
                    f"the run drops each epoch's short last batch (drop_last, the authors' unified scripts) but "
                    f"has only {num_images} training images for a batch of {config.batch_size}: no step at all; "
                    f"lower --batch-size to at most {num_images}"
                )
            steps_per_epoch = num_images // config.batch_size
        else:
            steps_per_epoch = math.ceil(num_images / config.batch_size)
        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        plan = StepPlan(steps_per_epoch, total_steps)
        log.info(
            "training %s on %d images (%s), %d step(s) of batch %d, loss %s, device %s",
            self.model.backbone,
            num_images,
            ", ".join(self.categories),
            total_steps,
            config.batch_size,
            config.loss,
            self.device,
        )
        if (line := self.parallel.describe()) is not None:
            log.info(line)
        return plan

    def start_progress(self, plan: StepPlan, *, enabled: bool) -> None:
        """Start the clock, the progress bar (rank 0, when ``enabled``) and the batch trace if asked for."""
        if enabled and self.main:
            from tqdm import tqdm

            self._bar = tqdm(
                total=plan.total_steps,
                initial=min(self.step_count, plan.total_steps),
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
        self._trace = _open_trace(self.context)
        self._started = time.perf_counter()

    # -- one epoch, one step ------------------------------------------------------------------
    def remaining_epochs(self, plan: StepPlan):
        """The epochs still to run (after a resume, from the saved one), while steps remain."""
        for epoch in range(self.epoch, plan.epochs):
            if self.step_count >= plan.total_steps:
                return
            yield epoch

    def batches(self, train_set, epoch: int):
        """This process's batches of ``epoch``: the order depends only on (seed, epoch) (``sampler``
        ``"seeded"``), or is the authors' DataLoader's for their script under the same seed
        (``"authors"``: :func:`~minimaxad.engine.distributed.authors_epoch_order`)."""
        config = self.config
        self.network.train()  # the encoder stays in eval mode (MiniMaxAD.train)
        order = getattr(train_set, "epoch_order", None)  # tiles: grouped by photo
        if config.sampler == "authors":
            if order is not None:
                raise TrainingError(
                    "--sampler authors draws whole photos as the authors' DataLoader does; it cannot order "
                    "tiles (--tile-size): use --sampler seeded"
                )
            state, count = self._authors_rng_state, len(train_set)
            order = lambda _generator: authors_epoch_order(state, epoch, count)  # noqa: E731
        sampler = EpochBatchSampler(
            len(train_set),
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            rank=self.context.rank,
            world_size=self.context.world_size,
            drop_last=config.drop_last,
            order=order,
        )
        global_sizes = [len(b) for b in sampler.global_batches()]
        local_batches = list(sampler)
        skip, self._resume_batch = self._resume_batch, 0  # resumed mid-epoch: those batches were done
        global_sizes, local_batches = global_sizes[skip:], local_batches[skip:]
        loader = DataLoader(
            train_set,
            batch_sampler=local_batches,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            collate_fn=_collate_or_empty,
            generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch)),
        )
        self.epoch = epoch
        for index, batch in enumerate(loader):
            if batch is None:  # this rank's slice of a short last batch is empty: take part anyway
                if self._empty_images is None:
                    self._empty_images = torch.zeros((0, *train_set[0]["image"].shape))
                batch = {"image": self._empty_images, "path": []}
            images = batch["image"].to(self.device, non_blocking=True)
            if self._channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield Batch(images, global_sizes[index], local_batches[index], list(batch.get("path", [])))

    def step(self, batch: Batch) -> None:
        """Forward, loss, and an optimiser update, or a skipped step when the loss is not finite
        (its forward pass's BatchNorm statistics undone too: a skipped step changes nothing)."""
        statistics = _batchnorm_statistics(self.model)
        saved = [tensor.clone() for tensor in statistics]
        loss = self._loss(batch)
        value = self.parallel.loss_value(loss)
        self.optimizer.zero_grad(set_to_none=True)
        if math.isfinite(value):
            self._update(loss, value, batch)
        else:
            with torch.no_grad():
                for tensor, before in zip(statistics, saved):
                    tensor.copy_(before)
            self._skip(loss, value)
        self.step_count += 1
        self.seen_images += batch.global_size
        if self._bar is not None:
            rate = self.seen_images / max(time.perf_counter() - self._started, 1e-9)
            self._bar.set_postfix(epoch=self.epoch, loss=f"{self.loss_value:.4f}", img_s=f"{rate:.1f}")
            self._bar.update(1)

    def _loss(self, batch: Batch) -> torch.Tensor:
        config = self.config
        with autocast_context(self.device, config.precision):
            encoder_features, decoder_features = self.network(batch.images)
        # the loss (quantiles, cosine) in float32 whatever the forward precision
        encoder_features = [f.float() for f in encoder_features]
        decoder_features = [f.float() for f in decoder_features]
        return self.parallel.loss(
            config.loss,
            encoder_features,
            decoder_features,
            tuple(batch.images.shape[-2:]),
            global_batch=batch.global_size,
            p_hard=config.p_hard,
            p_lim=config.p_lim,
            limit_batch_size=adc_limit_batch_size(config),
        )

    def _update(self, loss: torch.Tensor, value: float, batch: Batch) -> None:
        self.nonfinite_in_a_row = 0
        self.scaler.scale(loss).backward()
        if self._trace is not None:
            _trace_step(self._trace, self.context, self.epoch, self.step_count, batch, value, self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_value = value

    def _skip(self, loss: torch.Tensor, value: float) -> None:
        self.parallel.join_skipped_step(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        if self.main:
            warnings.warn(f"non-finite loss ({value}) at step {self.step_count}: step skipped", RuntimeWarning)
        log.warning("non-finite loss at step %d (%d in a row): step skipped", self.step_count, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.config.max_nonfinite_steps:
            raise TrainingError(
                f"the loss was non-finite for {self.nonfinite_in_a_row} steps in a row (last at step "
                f"{self.step_count}); lower the learning rate (--lr, now {self.config.lr}) or use --precision fp32"
            )

    def end_epoch(self, epoch: int, plan: StepPlan) -> None:
        """ExponentialLR once per finished epoch; a resumable checkpoint every ``checkpoint_every``."""
        if plan.ends_epoch(self.step_count):
            self.scheduler.step()
        log.info(
            "epoch %d done: step %d, loss %.5f, lr %.3g",
            epoch,
            self.step_count,
            self.loss_value,
            self.scheduler.get_last_lr()[0],
        )
        every = self.config.checkpoint_every
        if self.main and every and (epoch + 1) % every == 0 and self.step_count < plan.total_steps:
            self._save_resumable(epoch + 1)

    # -- finish -------------------------------------------------------------------------------
    def finish(self, plan: StepPlan, train_set, holdout_set) -> TrainResult:
        """Final ``last.pt``, thresholds, ``checkpoint.pt`` (rank 0); the result on every rank."""
        if self._bar is not None:
            self._bar.close()
        if self._trace is not None:
            self._trace.close()
        elapsed = time.perf_counter() - self._started
        rate = self.seen_images / elapsed if elapsed > 0 else float("nan")
        self.parallel.unwrap(self.model)
        checkpoint_path = self.output_dir / "checkpoint.pt"
        epochs_done = self.epoch + 1
        if not self.main:
            return TrainResult(self.model, checkpoint_path, self.step_count, epochs_done, self.loss_value, rate, {})
        self._save_resumable(*plan.position(self.step_count))  # mid-epoch (--max-steps) resumes exactly
        thresholds = calibrate(self.model, self.config, holdout_set, train_set, self.device)
        checkpoint = build_checkpoint(
            self.model, self.config.to_dict(), categories=self.categories, thresholds=thresholds
        )
        checkpoint_path = save_checkpoint(checkpoint_path, checkpoint)
        log.info("saved %s (%d steps, %.1f images/s)", checkpoint_path, self.step_count, rate)
        return TrainResult(self.model, checkpoint_path, self.step_count, epochs_done, self.loss_value, rate, thresholds)

    def _save_resumable(self, epoch: int, batch_in_epoch: int = 0) -> None:
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": self.step_count,
            "batch_in_epoch": batch_in_epoch,
            "data": self.data,
        }
        save_checkpoint(
            self.last_path,
            build_checkpoint(
                self.model, self.config.to_dict(), categories=self.categories, training_state=training_state
            ),
        )

    @property
    def _channels_last(self) -> bool:
        return self.config.channels_last and self.device.type == "cuda"


def training_items(config: RunConfig, train_set):
    """What the steps draw from: ``train_set``'s photos, or with tiling every tile of them
    (:class:`~minimaxad.data.tiles.TrainingTiles`; ``--cache`` keeps all decoded photos in memory)."""
    tiling = config.tiling()
    if tiling is None:
        return train_set
    from minimaxad.data.tiles import TrainingTiles

    tiles = TrainingTiles(train_set, tiling, cache_all=config.cache)
    log.info("tiling: %d training photos cut into %d tiles, %s", len(train_set), len(tiles), tiling.describe())
    return tiles


def _fingerprint_of(train_set) -> dict[str, Any] | None:
    """The training files' fingerprint (None for a dataset that does not list its files)."""
    paths = getattr(train_set, "paths", None)
    return data_fingerprint(paths) if paths is not None else None


def _batchnorm_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    """Running mean, variance and count of every BatchNorm in training mode (the decoder's)."""
    return [
        buffer
        for module in model.modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]


def _collate_or_empty(items):
    """``collate``, or None for a rank's empty slice of the last batch (``collate`` refuses it)."""
    return collate(items) if items else None


def _trace_step(
    trace, context: DistributedContext, epoch: int, step: int, batch: Batch, loss: float, model: MiniMaxAD
) -> None:
    """One line of the batch trace: this rank's images, the global loss and gradient norm (after
    DDP's all-reduce the gradients are the same on every rank)."""
    grads = [p.grad.detach().float().pow(2).sum() for p in model.trainable_parameters() if p.grad is not None]
    grad_norm = float(torch.stack(grads).sum().sqrt()) if grads else 0.0
    trace.write(
        json.dumps(
            {
                "rank": context.rank,
                "epoch": epoch,
                "step": step,
                "indices": batch.indices,
                "paths": batch.paths,
                "loss": loss,
                "grad_norm": grad_norm,
            }
        )
        + "\n"
    )
    trace.flush()


def _open_trace(context: DistributedContext):
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return open(Path(folder) / f"rank{context.rank}.jsonl", "a")


def calibrate(model: MiniMaxAD, config: RunConfig, holdout_set, train_set, device) -> dict[str, Any]:
    """Thresholds from held-out normal images; without them, from the training images. Either
    way at most ``val_max_images`` of *each* category (a seeded choice: every category of a
    unified model is represented and gets its own thresholds), never augmented (a threshold
    must come from the images as the test sees them, not from random crops)."""
    from minimaxad.data import calibration_subset

    if holdout_set is not None and len(holdout_set) > 0:
        from minimaxad.data.build import validation_split

        # a format with its own calibration photos (MVTec AD 2 validation/good) is calibrated on them
        split = None if config.extra_datasets else validation_split(config.format or "mvtec")
        dataset, source = (
            holdout_set,
            f"normal validation photos ({split})" if split else "normal images held out of training",
        )
    else:
        dataset = train_set
        source = (
            "TRAINING images of each category, un-augmented (no held-out split: thresholds are likely "
            "too low; use --val-fraction)"
        )
    if hasattr(dataset, "subset"):
        dataset = calibration_subset(dataset, config.val_max_images, seed=config.seed)
    if hasattr(dataset, "with_augment"):
        dataset = dataset.with_augment(False)
    outputs = run_dataset(
        model,
        dataset,
        top_ratio=config.top_ratio,
        batch_size=config.batch_size,
        device=device,
        workers=config.workers,
        collect_masks=False,
        tiling=config.tiling(),
    )
    return calibrate_thresholds(
        outputs.scores,
        outputs.map_list(),
        image_fpr=config.image_fpr,
        pixel_fpr=config.pixel_fpr,
        pixel_rule=config.pixel_threshold_rule,
        source=source,
        seed=config.seed,
        categories=outputs.categories,
    )
