"""Training on several processes (GPUs, machines) with PyTorch's own engine: torchrun + DDP.

``torchrun --nproc-per-node N -m minimaxad fit ...`` starts N copies of the program; each finds
its rank in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the
process group (nccl on CUDA, gloo on CPU) and trains a :class:`DistributedDataParallel` model.
See ``docs/distributed.md`` for the commands and what is exact.

The aim is that a run on N processes gives the weights of a one-process run with the same
``--batch-size`` (the GLOBAL batch) and seed, within float rounding. Four pieces make it so:

* :class:`EpochBatchSampler` - one data order for every world size: a permutation seeded by
  ``(seed, epoch)`` only, cut into global batches, each cut into contiguous per-rank slices.
* :func:`distributed_loss` - each rank's share of the global batch's loss, scaled so that the
  gradient DDP averages over ranks is the gradient of the one-process loss. The ADC loss's
  quantiles are statistics of the whole batch: the exact ``"global"`` form gathers every rank's
  (detached) anomaly maps to compute them; ``"per-rank"`` is the cheap, inexact form.
* :class:`SyncBatchNorm2d` - BatchNorm whose training statistics are those of the global batch,
  on any device (``torch.nn.SyncBatchNorm`` refuses CPU tensors, so gloo runs need our own).
* rank 0 alone writes files, calibrates and evaluates (:mod:`minimaxad.engine.runner`).
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from minimaxad.anomaly_map import training_anomaly_map
from minimaxad.losses import adc_loss, adc_threshold, compute_loss, quantile

# Rank 0 calibrates thresholds and saves the checkpoint while the other ranks wait in the next
# collective call (per-category runs); a generous limit keeps a slow disk from killing the run.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)

ADC_MODES = ("global", "per-rank")


# -- who am I -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: ``world_size == 1`` is an ordinary one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when the run has several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes files, calibrates and evaluates."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here; nothing to wait for in a one-process run."""
        if self.enabled:
            dist.barrier()

    def first_local_rank_then_others(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on each machine's local rank 0 first, then on the other ranks (e.g. a
        download into a shared cache, so that the others find it there)."""
        result = None
        for turn in (0, 1):
            if (self.local_rank == 0) == (turn == 0):
                result = action()
            self.barrier()
        return result


SINGLE_PROCESS = DistributedContext()


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher setting ``WORLD_SIZE``) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_context() -> DistributedContext:
    """The context of an initialised default process group, else :data:`SINGLE_PROCESS`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=dist.get_backend(),
    )


def backend_for(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for everything else (CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def training_device(device: torch.device, context: DistributedContext) -> torch.device:
    """Under torchrun every process drives the GPU of its ``LOCAL_RANK``."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


@contextmanager
def distributed_session(device: torch.device) -> Iterator[DistributedContext]:
    """Join the process group when launched by torchrun (once), leave it at the end, errors included.

    Outside torchrun, or when the caller already initialised a group, this changes nothing.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield current_context()
        return
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; "
            "install a build with distributed support or run one process"
        )
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    try:
        yield current_context()
    finally:
        dist.destroy_process_group()


def broadcast_object(value: Any, context: DistributedContext, device: torch.device) -> Any:
    """Rank 0's ``value`` on every rank (pickled; only between the processes of one run)."""
    if not context.enabled:
        return value
    holder = [value if context.is_main else None]
    dist.broadcast_object_list(holder, src=0, device=device if device.type == "cuda" else None)
    return holder[0]


# -- data order ---------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order: the run's seed and the epoch, nothing else."""
    return seed * 100_003 + epoch


SAMPLERS = ("seeded", "authors")


def authors_epoch_order(rng_state: torch.Tensor, epoch: int, num_items: int) -> list[int]:
    """Epoch ``epoch``'s order of the authors' ``DataLoader(shuffle=True)`` (no generator given).

    Their scripts seed the global generator, build the network (which draws its weights from it),
    then iterate the DataLoader once per epoch. Each ``iter(loader)`` draws one int64 from the
    global generator for the workers' base seed, then the ``RandomSampler`` draws one more as the
    seed of that epoch's ``randperm`` (PyTorch 1.x-2.x; nothing else draws from it in their loop,
    workers have their own). ``rng_state`` is ``torch.get_rng_state()`` right after the network's
    construction; the order depends on it and ``epoch`` only (replayed, so resume is exact).
    """
    if epoch < 0 or num_items < 1:
        raise ValueError(f"authors_epoch_order needs epoch >= 0 and items, got epoch {epoch}, {num_items} items")
    generator = torch.Generator()
    generator.set_state(rng_state)
    seed = 0
    for _ in range(epoch + 1):
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader iterator's base seed
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())  # RandomSampler's
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous slice of ``count`` items: the first
    ``count % world_size`` ranks hold one item more; with ``count < world_size`` the last ranks
    hold none."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's part of each global batch of one epoch (a ``batch_sampler`` for a DataLoader).

    ``torch.randperm(num_items)`` from a generator seeded by ``(seed, epoch)`` only, cut into
    global batches of ``batch_size``, each global batch cut into contiguous per-rank slices
    (:func:`shard_bounds`). The last global batch is smaller (no padding), or, with
    ``drop_last=True`` (the authors' unified scripts), left out: ``floor(N/B)`` batches instead
    of ``ceil(N/B)``, and the items of the dropped tail differ from epoch to epoch. The global
    batches do not depend on the world size, so 1 and N processes train on the same batches, and
    without ``drop_last`` every item is seen exactly once per epoch. A rank gets an empty list
    when the last global batch has fewer items than there are ranks; the trainer runs it as a
    batch of zero images.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        order: Callable[[torch.Generator], list[int]] | None = None,
    ) -> None:
        if batch_size < 1 or num_items < 1:
            raise ValueError(
                f"EpochBatchSampler needs items and a positive batch size, "
                f"got {num_items} items, batch size {batch_size}"
            )
        if drop_last and num_items < batch_size:
            raise ValueError(
                f"dropping the short last batch leaves no batch at all: {num_items} training images, "
                f"batch size {batch_size}; lower --batch-size to at most {num_items} or keep the last batch"
            )
        if batch_size < world_size:
            raise ValueError(
                f"--batch-size {batch_size} is the GLOBAL batch and must be at least the number of "
                f"processes ({world_size}); raise --batch-size or start fewer processes"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.num_items, self.batch_size, self.drop_last = num_items, batch_size, drop_last
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.order = order

    def permutation(self) -> list[int]:
        """This epoch's order of all the items: the same on every rank and for every world size
        (``order(generator)`` when given, e.g. tiles grouped by photo; else a plain permutation)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.order is not None:
            return self.order(generator)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches of item indices; the last one short, or left out under ``drop_last``."""
        order = self.permutation()
        stop = len(self) * self.batch_size if self.drop_last else self.num_items
        return [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            start, stop = shard_bounds(len(batch), self.rank, self.world_size)
            yield batch[start:stop]

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.batch_size
        return math.ceil(self.num_items / self.batch_size)


# -- losses -------------------------------------------------------------------------------------
def gather_rows(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (sizes of dim 0 may differ,
    zero included). Detached: the result is for statistics, not for gradients."""
    tensor = tensor.detach().contiguous()
    world_size = dist.get_world_size(group)
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded, group=group)
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts)])


def distributed_loss(
    name: str,
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
    image_size: int | Sequence[int],
    *,
    global_batch: int,
    p_hard: float = 0.9999,
    p_lim: float = 0.9995,
    adc_mode: str = "global",
    limit_batch_size: float | None = None,
    group=None,
) -> torch.Tensor:
    """This rank's share ``L_r`` of the loss of the global batch (``global_batch`` images).

    ``limit_batch_size``: the batch size of the ADC pixel limit (the nominal GLOBAL batch in the
    authors' scripts; None: the images actually in the global batch), see
    :func:`minimaxad.losses.adc_threshold`.

    DDP averages gradients over the ``N`` ranks, so ``L_r`` is scaled such that
    ``mean_r grad(L_r) == grad(L)``, ``L`` being :func:`minimaxad.losses.compute_loss` on the
    whole global batch in one process - also when ranks hold unequal numbers of images, or none:

    * ``global``: ``N * sum_k sum_{local b} (1 - cos) / global_batch``.
    * ``local``: ``N * (sum of local S^2) / (global_batch * H * W)``.
    * ``adc`` (``adc_mode="global"``, exact): every rank gathers all ranks' detached maps ``S``
      and computes ``std(S)``, ``quantile(S, p_hard)``, the count above it and, if needed,
      ``quantile(S^2, p_lim)`` on the global batch, as one process would; then
      ``L_r = N * (sum of the local selected S^2) / (global count of selected pixels)``.
    * ``adc`` (``adc_mode="per-rank"``, what a naive DDP port does): each rank runs
      :func:`~minimaxad.losses.adc_loss` on its own images, so thresholds come from ``1/N`` of the
      pixels (the ``p_hard = 0.9999`` quantile of fewer pixels is a noisier, lower estimate of
      the tail) and DDP averages N per-rank means with equal weights. Not equal to one process.
      A nominal pixel limit is shared out as ``limit_batch_size / N`` images per rank.
    * ``local-hm``: like the global ADC, with the global ``quantile(S^2, p_lim)``.

    ``sum(L_r) / N`` is the loss value of the global batch (the per-rank mean for ``per-rank``).
    """
    world_size = dist.get_world_size(group)
    if name == "global":
        total = 0.0
        for e, d in zip(encoder_features, decoder_features):
            total = total + (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).sum()
        return total * world_size / global_batch
    score_map = training_anomaly_map(encoder_features, decoder_features, image_size)
    squared = score_map * score_map
    if name == "local":
        return squared.sum() * world_size / (global_batch * squared.shape[-2] * squared.shape[-1])
    if name == "adc" and adc_mode == "per-rank":
        if score_map.shape[0] == 0:
            return squared.sum()  # zero, but in the graph: DDP's gradient all-reduce still runs
        share = None if limit_batch_size is None else limit_batch_size / world_size
        return adc_loss(encoder_features, decoder_features, image_size, p_hard, p_lim, limit_batch_size=share)
    if name == "adc" and adc_mode != "global":
        raise ValueError(f"unknown ADC mode {adc_mode!r}; choose one of {', '.join(ADC_MODES)}")
    if name not in ("adc", "local-hm", "local_hm"):
        raise ValueError(f"unknown loss {name!r}; choose one of adc, global, local, local-hm")
    everything = gather_rows(score_map, group)  # the global batch's map, in one-process order
    everything_squared = everything * everything
    with torch.no_grad():
        if name == "adc":
            threshold = adc_threshold(everything, p_hard, p_lim, limit_batch_size)[0]
        else:
            threshold = quantile(everything_squared, p_lim)
    selected_count = int((everything_squared >= threshold).sum().item())
    return squared[squared >= threshold].sum() * world_size / selected_count


def global_loss_value(share: torch.Tensor, context: DistributedContext) -> float:
    """The loss of the global batch from every rank's share (``sum_r L_r / N``), on every rank."""
    if not context.enabled:
        return float(share.detach().item())
    total = share.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total.item()) / context.world_size


# -- BatchNorm over the global batch ------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank, differentiable: every rank's output feeds its own loss, so the
    gradient reaching ``x_r`` is the sum over ranks of the output gradients - an all-reduce too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over all ranks of the default process group."""
    return _AllReduceSum.apply(tensor)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the global batch.

    ``torch.nn.SyncBatchNorm`` only accepts GPU tensors, so on CPU (gloo) we synchronise
    ourselves, in two passes with autograd-aware all-reduces (their backward is an all-reduce of
    the gradients, which is what the chain rule through a sum over ranks asks for):

    1. ``mean = all_reduce(sum x) / all_reduce(count)`` per channel;
    2. ``var = all_reduce(sum (x - mean)^2) / count`` (biased, used to normalise, as BatchNorm);

    and the running statistics move with the global mean and the unbiased global variance, so
    every rank holds the same buffers. Outside training, or in one process, it is BatchNorm2d.
    A rank with zero images adds zero sums and a zero count. State dict keys are BatchNorm2d's.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``, normalised by the global batch's statistics when training
        under several processes; plain ``nn.BatchNorm2d`` otherwise.
        """
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        count_here = input.numel() // channels if channels else 0
        sums = all_reduce_sum(torch.cat([input.sum(dim=(0, 2, 3)), input.new_full((1,), float(count_here))]))
        count = sums[-1].detach()
        mean = sums[:channels] / count
        centered = input - mean.view(1, -1, 1, 1)
        variance = all_reduce_sum((centered * centered).sum(dim=(0, 2, 3))) / count
        output = centered * torch.rsqrt(variance + self.eps).view(1, -1, 1, 1)
        if self.affine:
            output = output * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = variance.detach() * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return output


def _replace_batchnorms(
    module: nn.Module,
    wanted: Callable[[nn.Module], bool],
    make: Callable[[nn.BatchNorm2d | nn.SyncBatchNorm], nn.Module],
) -> nn.Module:
    """Swap every child for which ``wanted`` holds with ``make(child)``, state copied."""
    for name, child in module.named_children():
        if wanted(child):
            replacement = make(child).to(child.running_mean.device)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            _replace_batchnorms(child, wanted, make)
    return module


def _same_shape(kind: type) -> Callable[[nn.Module], nn.Module]:
    return lambda bn: kind(
        bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats
    )


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make the trainable bottleneck and decoder's BatchNorms global-batch ones (the frozen
    encoder runs in eval mode on stored statistics and is left alone): PyTorch's
    ``SyncBatchNorm`` on CUDA, our :class:`SyncBatchNorm2d` elsewhere."""
    kind = nn.SyncBatchNorm if device.type == "cuda" else SyncBatchNorm2d
    for part in (model.bottleneck, model.decoder):
        _replace_batchnorms(part, lambda m: type(m) is nn.BatchNorm2d, _same_shape(kind))
    return model


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Back to plain ``nn.BatchNorm2d`` (what re-parameterization, export and checkpoints expect)."""
    return _replace_batchnorms(
        model, lambda m: isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm2d)), _same_shape(nn.BatchNorm2d)
    )


# -- what the training loop asks ----------------------------------------------------------------
class DataParallel:
    """Everything one training process does differently when it is one of several, behind one object.

    The training loop calls the same methods in a one-process run (where they reduce to the plain
    model and :func:`~minimaxad.losses.compute_loss`) and under torchrun (DDP, global-batch
    BatchNorm and losses), so it has no branch on the world size.
    """

    def __init__(
        self,
        context: DistributedContext,
        device: torch.device,
        *,
        sync_batchnorm: bool = True,
        adc_mode: str = "global",
    ) -> None:
        self.context, self.device = context, device
        self.sync_batchnorm, self.adc_mode = sync_batchnorm, adc_mode

    @property
    def is_main(self) -> bool:
        """True on rank 0 (see :attr:`DistributedContext.is_main`)."""
        return self.context.is_main

    def describe(self) -> str | None:
        """One log line about the process group, or None for a one-process run."""
        if not self.context.enabled:
            return None
        return (
            f"distributed: {self.context.world_size} processes ({self.context.backend}), "
            f"{'global-batch' if self.sync_batchnorm else 'per-rank'} BatchNorm statistics, "
            f"ADC thresholds {self.adc_mode}"
        )

    def prepare(self, model: nn.Module) -> nn.Module:
        """Global-batch BatchNorms where asked; call before building the optimiser (new parameters)."""
        if self.context.enabled and self.sync_batchnorm:
            convert_sync_batchnorm(model, self.device)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: ``model`` itself, or a DistributedDataParallel around it."""
        if not self.context.enabled:
            return model
        # harmless: depthwise kernels (C, 1, k, k) have a size-1 dim whose stride differs from DDP's bucket
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def loss(
        self,
        name: str,
        encoder_features: Sequence[torch.Tensor],
        decoder_features: Sequence[torch.Tensor],
        image_size: int | Sequence[int],
        *,
        global_batch: int,
        p_hard: float,
        p_lim: float,
        **loss_options: Any,
    ) -> torch.Tensor:
        """This process's share of the loss of the global batch (the whole loss in one process)."""
        if not self.context.enabled:
            return compute_loss(
                name, encoder_features, decoder_features, image_size, p_hard=p_hard, p_lim=p_lim, **loss_options
            )
        return distributed_loss(
            name,
            encoder_features,
            decoder_features,
            image_size,
            global_batch=global_batch,
            p_hard=p_hard,
            p_lim=p_lim,
            adc_mode=self.adc_mode,
            **loss_options,
        )

    def loss_value(self, share: torch.Tensor) -> float:
        """The global batch's loss, the same number on every rank (so that all decide alike)."""
        return global_loss_value(share, self.context)

    def join_skipped_step(self, share: torch.Tensor) -> None:
        """A skipped step still runs backward under DDP: every rank must join the gradient all-reduce."""
        if self.context.enabled:
            share.backward()

    def unwrap(self, model: nn.Module) -> nn.Module:
        """Plain BatchNorm2d again: what checkpoints, re-parameterization and export expect."""
        return revert_sync_batchnorm(model)
