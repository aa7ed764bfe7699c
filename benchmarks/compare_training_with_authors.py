"""The authors' training step and ours, side by side, from the same weights on the same batches.

    python benchmarks/compare_training_with_authors.py --authors-code ../shared/authors_code
    python benchmarks/compare_training_with_authors.py --authors-code DIR --steps 300 --mode free --control
    python benchmarks/compare_training_with_authors.py --authors-code DIR --dtype float64 --steps 20
    python benchmarks/compare_training_with_authors.py --steps 100 --images 80 --image-size 64 \
        --control every-step --controls 2 --ours fast,plain-adamw,plain-encoder,plain-convs,plain-ffn,exact
    python benchmarks/compare_training_with_authors.py --seeds 111 1 2 3 4 --epochs 6 --images 64 --image-size 64

Their side is their own code: the model files through ../shared/tools/authors_shim.py and the
loss functions (``loss_adc``, ``cal_anomaly_map_tensor``, ``loss_fucntion``) read out of their
training script with ``ast`` and executed as they are; the loop lines around them are their
script's: ``inputs = encoder(img)`` with autograd on (encoder in eval mode), ``outputs =
decoder(bn(inputs))``, ``num_lim = image_size * image_size * batch_size * (1 - p_lim)`` from the
nominal batch, AdamW over ``decoder + bn`` parameters, ``zero_grad / backward / step``,
ExponentialLR once per epoch. Our side is our trainer (:class:`minimaxad.engine.trainer.TrainingRun`
and its ``step``), except with ``--dtype float64``, where our pieces run the same sequence without
the trainer's float32 cast of the features.

Both start from one initial network (under one seed our constructors draw the authors' exact
weights; their weights are copied into ours anyway) and get the same batches: real photos
(default ``../shared/data/magnetic_tile/train/good``: grayscale JPEGs of ~700 shapes, 100-600 px a
side) read by our dataset, cut by our sampler (the short last batch of each epoch kept, as the
single-class scripts). Their input pipeline (PIL ``convert('RGB')`` -> ``Resize((s, s))`` bilinear
-> ``ToTensor`` -> ``Normalize``, restated with PIL) is compared with ours on every batch.

Each step records the loss of both, the largest gradient and weight differences and the ADC
branch the authors' rule takes. ``--mode free`` lets both run on their own (differences
accumulate); ``--mode resync`` copies their weights, BatchNorm statistics and AdamW moments into
ours after every step, so each row is one step's difference. ``--control`` runs a second copy of
their step from their weights perturbed by float32 rounding (relative 2**-24; ``--control
every-step``: again after every step, as a different but equally exact implementation's rounding
would): how much two runs of the SAME code drift apart from rounding-level differences, the
yardstick for the free mode; ``--controls K`` runs K of them (perturbation seeds ``seed``,
``seed + 1``...), whose spread is the yardstick's own.

``--ours`` runs several variants of our step side by side from the same start on the same
batches: ``fast`` (today's trainer) and each of our speed changes switched back to the plain
computation (:data:`TOGGLES`: PyTorch's default AdamW instead of the fused one, the encoder
itself instead of its fused copy, ``nn.Conv2d``'s own backward instead of ours, the authors'
FFN order instead of our GEMM algebra), or all of them (``exact``). The summary gives each run's
difference from theirs by parameter group (at the end, and every ``--group-every`` steps), the
BatchNorm layers that differ most (with the controls' values there) and checks that need no
tolerance: equal ``num_batches_tracked`` (no extra or missing forward pass in training mode),
equal AdamW step counts (no skipped step, so the skipped-step restore never ran) and no
SyncBatchNorm in a one-process model.

``--seeds S ...`` instead trains whole runs from each seed and scores them on the test split
(our common path): their loop as their script runs it (their init under the seed, their
``DataLoader(shuffle=True)`` on the global generator), our fit's ``TrainingRun`` with the default
order (``ours``) and with ``--sampler authors`` (``ours-authors-order``, checked to get their
batches); it prints mean ± std over the seeds and the paired difference from theirs.
``--synthetic DIR`` builds minimaxad's synthetic ``weave`` category there and uses it as data.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from minimaxad.anomaly_map import training_anomaly_map
from minimaxad.data import build_dataset
from minimaxad.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import SINGLE_PROCESS, EpochBatchSampler
from minimaxad.engine.trainer import Batch, TrainingRun, adc_limit_batch_size
from minimaxad.losses import adc_threshold, compute_loss

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "magnetic_tile"
# the script each loss is taken from, and its functions used (their spelling)
SCRIPT_FOR_LOSS = {
    "adc": ("train_single_GoodsAD.py", ("loss_adc", "cal_anomaly_map_tensor")),
    "global": ("train_single_ViSA.py", ("loss_fucntion",)),
}


# -- the authors' code ----------------------------------------------------------------------------
def import_authors(authors_code: Path, shim: Path = SHARED / "tools" / "authors_shim.py") -> SimpleNamespace:
    """Their model modules (imported through the shim, no timm) and their scripts' loss functions."""
    if not (authors_code / "models" / "unireplknet.py").is_file():
        raise SystemExit(
            f"--authors-code {authors_code}: no models/unireplknet.py there; give a checkout of WangFengJiee/MiniMaxAD"
        )
    if not shim.is_file():
        raise SystemExit(f"{shim} not found: it lets the authors' model files import without timm")
    for folder in (str(shim.parent), str(authors_code)):
        if folder not in sys.path:
            sys.path.append(folder)
    import authors_shim

    authors_shim.install()
    with contextlib.redirect_stdout(io.StringIO()):
        import models.de_unireplknet as de_unireplknet
        import models.unireplknet as unireplknet
    losses = {loss: script_functions(authors_code / script, names) for loss, (script, names) in SCRIPT_FOR_LOSS.items()}
    return SimpleNamespace(unireplknet=unireplknet, de_unireplknet=de_unireplknet, losses=losses)


def script_functions(script: Path, names: Iterable[str]) -> dict[str, Any]:
    """The named top-level functions of one of their scripts, executed as written (the script
    itself imports torchvision, OpenCV and pandas, so it cannot be imported here)."""
    tree = ast.parse(script.read_text(), filename=str(script))
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in set(names)]
    missing = set(names) - {node.name for node in wanted}
    if missing:
        raise SystemExit(f"{script}: no function(s) {', '.join(sorted(missing))}")
    namespace: dict[str, Any] = {"torch": torch, "F": F, "np": np}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(script), "exec"), namespace)
    return {name: namespace[name] for name in names}


def authors_input(path: str, size: int) -> torch.Tensor:
    """Their ImageFolder loader and ``get_data_transforms(size, size)`` image path, restated:
    ``Image.open(f).convert('RGB')``, ``Resize((size, size))`` (PIL bilinear), ``ToTensor``,
    ``CenterCrop(size)`` (nothing to crop), ``Normalize(ImageNet)`` in float32."""
    with open(path, "rb") as handle:
        image = Image.open(handle).convert("RGB")
    image = image.resize((size, size), Image.BILINEAR)
    tensor = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


class AuthorsTraining:
    """Their network, optimiser, schedule and step, as in their training scripts."""

    def __init__(
        self,
        authors: SimpleNamespace,
        variant: str,
        *,
        loss: str,
        image_size: int,
        batch_size: int,
        lr: float = 5e-3,
        p_hard: float = 0.9999,
        p_lim: float = 0.9995,
        seed: int = 111,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder, self.bn = getattr(authors.unireplknet, f"unireplknet_{variant}")()
            self.decoder = getattr(authors.de_unireplknet, f"de_unireplknet_{variant}")()
        for module in (self.encoder, self.bn, self.decoder):
            module.to(dtype)
        self.authors, self.variant, self.functions = authors, variant, authors.losses[loss]
        self.loss_name, self.image_size, self.p_hard, self.p_lim = loss, image_size, p_hard, p_lim
        self.batch_size = batch_size
        self.num_lim = image_size * image_size * batch_size * (1 - p_lim)
        self.encoder.eval()
        self.optimizer = torch.optim.AdamW(
            list(self.decoder.parameters()) + list(self.bn.parameters()), lr=lr, betas=(0.9, 0.999), weight_decay=1e-5
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.995)

    def start_epoch(self) -> None:
        self.bn.train()
        self.decoder.train()

    def step(self, img: torch.Tensor) -> tuple[float, tuple[str, str] | None]:
        """One step of their loop; returns the loss and, for ADC, the branch their rule took
        (pixel limit of the nominal batch) and the one a limit of the actual batch would take."""
        inputs = self.encoder(img)
        outputs = self.decoder(self.bn(inputs))
        branches = None
        if self.loss_name == "adc":
            loss = self.functions["loss_adc"](inputs, outputs, self.p_hard, self.p_lim, self.num_lim, self.image_size)
            with torch.no_grad():  # their `if num < num_lim`, evaluated by our code, both ways
                score_map = training_anomaly_map(inputs, outputs, self.image_size)
                branches = (
                    adc_threshold(score_map, self.p_hard, self.p_lim, self.batch_size)[1],
                    adc_threshold(score_map, self.p_hard, self.p_lim)[1],
                )
        else:
            loss = self.functions["loss_fucntion"](inputs, outputs)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.item()), branches

    def end_epoch(self) -> None:
        self.scheduler.step()

    def named_trainables(self) -> dict[str, torch.nn.Parameter]:
        return {
            **{f"bottleneck.{k}": p for k, p in self.bn.named_parameters()},
            **{f"decoder.{k}": p for k, p in self.decoder.named_parameters()},
        }

    def state(self) -> dict[str, torch.Tensor]:
        return {
            **{f"bottleneck.{k}": v for k, v in self.bn.state_dict().items()},
            **{f"decoder.{k}": v for k, v in self.decoder.state_dict().items()},
        }

    def perturbed_twin(self, relative: float, perturbation_seed: int = 0, **settings: Any) -> "AuthorsTraining":
        """A new training from this one's weights, each trainable weight multiplied by ``1 +- relative``
        (random signs drawn from ``perturbation_seed``)."""
        twin = AuthorsTraining(self.authors, self.variant, **settings)
        for mine, source in ((twin.encoder, self.encoder), (twin.bn, self.bn), (twin.decoder, self.decoder)):
            mine.load_state_dict(source.state_dict())
        twin.perturb(relative, perturbation_seed)
        return twin

    @torch.no_grad()
    def perturb(self, relative: float, seed: int) -> None:
        """Multiply every trainable weight by ``1 + relative`` or ``1 - relative`` (random signs)."""
        generator = torch.Generator().manual_seed(seed)
        for p in self.named_trainables().values():
            signs = torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1
            p.mul_(1 + relative * signs)


# Our speed changes, each of which can be switched back to the plain computation (the authors'),
# one at a time, to see which (if any) makes our training drift from theirs more than rounding does.
TOGGLES = {
    "plain-adamw": "torch.optim.AdamW's default (for-loop) update instead of the fused kernel",
    "plain-encoder": "the frozen encoder as it is, not its re-parameterized (fused) copy",
    "plain-convs": "nn.Conv2d's own backward instead of DepthwiseConv2d's / StridedConv2d's",
    "plain-ffn": "the authors' permute -> Linear -> GELU -> GRN -> Linear -> permute -> BN, gamma * y + x",
}
VARIANTS = ("fast", *TOGGLES, "exact")  # fast: today's trainer; exact: every toggle at once


def variant_toggles(variant: str) -> tuple[str, ...]:
    """The toggles a variant name stands for (``fast``: none, ``exact``: all)."""
    if variant == "fast":
        return ()
    if variant == "exact":
        return tuple(TOGGLES)
    if variant in TOGGLES:
        return (variant,)
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def apply_toggles(run: TrainingRun, toggles: Iterable[str]) -> None:
    """Switch the named speed changes of ``run`` (set up, not yet stepped) back to plain PyTorch."""
    import types

    from minimaxad.models.blocks import UniRepLKNetBlock
    from minimaxad.models.convolutions import DepthwiseConv2d, StridedConv2d

    model = run.model
    for toggle in toggles:
        if toggle == "plain-adamw":
            group = run.optimizer.param_groups[0]
            run.optimizer = torch.optim.AdamW(
                model.trainable_parameters(), lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"]
            )
            run.scheduler = torch.optim.lr_scheduler.ExponentialLR(run.optimizer, gamma=run.config.lr_gamma)
        elif toggle == "plain-encoder":
            model.__dict__["_frozen_encoder"] = lambda: model.encoder  # instance attribute: no fused copy
        elif toggle == "plain-convs":
            for module in model.modules():
                if isinstance(module, (DepthwiseConv2d, StridedConv2d)):
                    module.forward = types.MethodType(torch.nn.Conv2d.forward, module)
        elif toggle == "plain-ffn":  # the trained blocks (the frozen encoder runs without autograd)
            for module in [*model.bottleneck.modules(), *model.decoder.modules()]:
                if isinstance(module, UniRepLKNetBlock):
                    module.pointwise_ffn = types.MethodType(_authors_pointwise_ffn, module)
        else:
            raise SystemExit(f"unknown toggle {toggle!r}; choose from {', '.join(TOGGLES)}")


def _authors_pointwise_ffn(block, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Their ``compute_residual`` after the SE block, on our modules (same weights)."""
    return x + block.gamma.view(1, -1, 1, 1) * block.pwconv2(block.act(block.pwconv1(y)))


class OurTraining:
    """Our trainer (:class:`TrainingRun`) fed with given batches; float64 runs our pieces in the
    trainer's order (forward, loss, zero_grad, backward, AdamW step) without its float32 cast.
    ``toggles`` (names of :data:`TOGGLES`) switch speed changes back to the plain computation."""

    def __init__(
        self,
        variant: str,
        *,
        loss: str,
        image_size: int,
        batch_size: int,
        lr: float = 5e-3,
        seed: int = 111,
        dtype: torch.dtype = torch.float32,
        folder: Path,
        toggles: Iterable[str] = (),
    ) -> None:
        self.config = RunConfig(
            backbone=f"unireplknet_{variant}",
            encoder_weights="none",
            loss=loss,
            image_size=image_size,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device="cpu",
            workers=0,
            evaluate=False,
            checkpoint_every=0,
        )
        self.run = TrainingRun(self.config, folder, ["comparison"], SINGLE_PROCESS)
        with _quiet_warnings():
            self.run.set_up(resume=False)
        self.model, self.dtype = self.run.model, dtype
        self.model.to(dtype)
        apply_toggles(self.run, toggles)

    def start_epoch(self) -> None:
        self.run.network.train()  # what TrainingRun.batches does at each epoch

    def step(self, images: torch.Tensor, indices: Sequence[int]) -> float:
        if self.dtype == torch.float32:
            self.run.step(Batch(images, len(indices), list(indices), []))
            return float(self.run.loss_value)
        config = self.config
        encoder_features, decoder_features = self.run.network(images)
        loss = compute_loss(
            config.loss,
            encoder_features,
            decoder_features,
            tuple(images.shape[-2:]),
            p_hard=config.p_hard,
            p_lim=config.p_lim,
            limit_batch_size=adc_limit_batch_size(config),
        )
        self.run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.run.optimizer.step()
        return float(loss.item())

    def end_epoch(self) -> None:
        self.run.scheduler.step()

    def named_trainables(self) -> dict[str, torch.nn.Parameter]:
        return {
            **{f"bottleneck.{k}": p for k, p in self.model.bottleneck.named_parameters()},
            **{f"decoder.{k}": p for k, p in self.model.decoder.named_parameters()},
        }

    def state(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    def copy_from(self, theirs: AuthorsTraining, optimizer: bool = False) -> None:
        """Their weights (encoder too), BatchNorm statistics and, if asked, AdamW moments into ours."""
        missing, unexpected = self.model.encoder.load_state_dict(theirs.encoder.state_dict(), strict=False)
        if missing or any(not k.startswith(("downsample_layers.3.", "norm3.")) for k in unexpected):
            raise RuntimeError(f"encoder layouts differ: missing {missing}, unexpected {unexpected}")
        self.model.bottleneck.load_state_dict(theirs.bn.state_dict())
        self.model.decoder.load_state_dict(theirs.decoder.state_dict())
        if optimizer:
            mine, reference = self.named_trainables(), theirs.named_trainables()
            for name, p in mine.items():
                state = theirs.optimizer.state.get(reference[name])
                if state:
                    self.run.optimizer.state[p] = {k: v.clone() for k, v in state.items()}


@contextlib.contextmanager
def _quiet_warnings():
    import logging

    logger = logging.getLogger("minimaxad")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- comparing ------------------------------------------------------------------------------------
def max_abs_difference(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Iterable[str]
) -> tuple[float, str]:
    worst, where = 0.0, ""
    for key in keys:
        x, y = a[key], b[key]
        if x is None or y is None:
            if (x is None) != (y is None):
                return math.inf, key
            continue
        d = float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
        if d > worst:
            worst, where = d, key
    return worst, where


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Iterable[str]) -> float:
    """||a - b|| / ||b|| over all the tensors together."""
    num = den = 0.0
    for key in keys:
        x, y = a[key], b[key]
        if x is None or y is None:
            continue
        num += float((x.detach().double() - y.detach().double()).pow(2).sum())
        den += float(y.detach().double().pow(2).sum())
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def parameter_group(key: str) -> str:
    """Which kind of state ``key`` is. 'zero-gradient': parameters whose exact gradient is 0 in
    training mode because a BatchNorm right after them removes any per-channel constant - GRN's
    beta (-> Linear -> BatchNorm) and the biases of the Dilated Reparam block's branch BatchNorms
    (summed, then the block's BatchNorm). In float32 their gradient is rounding noise, which
    AdamW's normalisation turns into steps of up to lr once it exceeds eps."""
    if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return "batchnorm statistics"
    if key.endswith("act.1.beta") or (("origin_bn" in key or "dil_bn" in key) and key.endswith(".bias")):
        return "zero-gradient parameters"
    return "other parameters"


def difference_by_group(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """relative_difference per :func:`parameter_group`."""
    groups: dict[str, list[str]] = {}
    for key in b:
        groups.setdefault(parameter_group(key), []).append(key)
    return {group: relative_difference(a, b, keys) for group, keys in sorted(groups.items())}


def gradients(training) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in training.named_trainables().items()}


@dataclass
class Setup:
    variant: str = "f"
    loss: str = "adc"
    image_size: int = 128
    batch_size: int = 8
    steps: int = 300
    seed: int = 111
    mode: str = "free"  # free | resync
    inputs: str = "ours"  # which pipeline's tensors both steps get: ours | authors
    dtype: str = "float32"
    control: str = "none"  # none | initial (perturbed start) | every-step (perturbed after every step)
    controls: int = 1  # how many controls (perturbation seeds 0, 1, ...): the yardstick's own spread
    images: int | None = None  # use the first N training images (fewer steps per epoch)
    data: Path = DEFAULT_DATA
    evaluate: bool = False  # score the test split with every final model (our common path)
    ours: tuple[str, ...] = ("fast",)  # our variants run side by side (VARIANTS); the first is "ours"
    group_every: int = 0  # record the difference by parameter group every N steps (0: at the end only)


def _our_name(index: int, variant: str) -> str:
    return "ours" if index == 0 else f"ours:{variant}"


def _control_name(index: int) -> str:
    return "control" if index == 0 else f"control{index + 1}"


def compare(authors: SimpleNamespace, setup: Setup, log=print) -> dict[str, Any]:
    """Run both trainings side by side; returns the per-step records and a summary."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[setup.dtype]
    dataset = build_dataset("mvtec", setup.data, "train", image_size=setup.image_size, validate=False)
    count = len(dataset) if setup.images is None else min(setup.images, len(dataset))
    settings = dict(loss=setup.loss, image_size=setup.image_size, batch_size=setup.batch_size, seed=setup.seed)
    theirs = AuthorsTraining(authors, setup.variant, dtype=dtype, **settings)
    with tempfile.TemporaryDirectory() as folder:
        mine = {
            _our_name(i, name): OurTraining(
                setup.variant, dtype=dtype, folder=Path(folder) / str(i), toggles=variant_toggles(name), **settings
            )
            for i, name in enumerate(setup.ours)
        }
        ours = mine["ours"]
        state_keys = list(theirs.state())
        same_init = max_abs_difference(ours.state(), theirs.state(), state_keys)[0] == 0.0
        same_encoder = all(
            torch.equal(v, theirs.encoder.state_dict()[k]) for k, v in ours.model.encoder.state_dict().items()
        )
        for training in mine.values():
            training.copy_from(theirs)
        controls = {}
        if setup.control != "none":
            for k in range(setup.controls):
                controls[_control_name(k)] = theirs.perturbed_twin(
                    2.0**-24, perturbation_seed=setup.seed + k, dtype=dtype, **settings
                )
        everyone = [theirs, *mine.values(), *controls.values()]
        names = list(theirs.named_trainables())
        records, input_diff, started = [], 0.0, time.perf_counter()
        group_history: list[dict[str, Any]] = []
        step, epoch = 0, 0
        log(
            f"{setup.variant} {setup.loss} {setup.image_size}px batch {setup.batch_size}, {count} images, mode "
            f"{setup.mode}, inputs {setup.inputs}, {setup.dtype}; initial weights identical under seed "
            f"{setup.seed}: bottleneck+decoder {same_init}, encoder {same_encoder}; ours: {', '.join(setup.ours)}"
        )
        while step < setup.steps:
            batches = EpochBatchSampler(count, setup.batch_size, seed=setup.seed, epoch=epoch).global_batches()
            for training in everyone:
                training.start_epoch()
            for indices in batches:
                items = [dataset[i] for i in indices]
                our_images = torch.stack([item["image"] for item in items])
                their_images = torch.stack([authors_input(item["path"], setup.image_size) for item in items])
                input_diff = max(input_diff, float((our_images - their_images).abs().max()))
                images = (our_images if setup.inputs == "ours" else their_images).to(dtype)
                their_loss, branches = theirs.step(images)
                our_loss = ours.step(images, indices)
                their_grads, our_grads = gradients(theirs), gradients(ours)
                grad_abs, grad_where = max_abs_difference(our_grads, their_grads, names)
                weight_abs, weight_where = max_abs_difference(ours.state(), theirs.state(), state_keys)
                record = {
                    "step": step,
                    "epoch": epoch,
                    "batch": len(indices),
                    "branch": branches and branches[0],
                    "branch_actual_limit": branches and branches[1],
                    "loss_authors": their_loss,
                    "loss_ours": our_loss,
                    "loss_diff": abs(our_loss - their_loss),
                    "grad_max_abs": grad_abs,
                    "grad_where": grad_where,
                    "grad_rel": relative_difference(our_grads, their_grads, names),
                    "weight_max_abs": weight_abs,
                    "weight_where": weight_where,
                    "weight_rel": relative_difference(ours.state(), theirs.state(), state_keys),
                }
                for name, training in mine.items():
                    if name != "ours":
                        other_loss = training.step(images, indices)
                        record[f"{name}_loss_diff"] = abs(other_loss - their_loss)
                        record[f"{name}_weight_rel"] = relative_difference(training.state(), theirs.state(), state_keys)
                for k, (name, twin) in enumerate(controls.items()):
                    control_loss, _ = twin.step(images)
                    if setup.control == "every-step":  # a rounding-level error in every weight, every step
                        twin.perturb(2.0**-24, seed=step + 1 + 1_000_003 * k)
                    record[f"{name}_loss_diff"] = abs(control_loss - their_loss)
                    record[f"{name}_weight_rel"] = relative_difference(twin.state(), theirs.state(), state_keys)
                records.append(record)
                if setup.mode == "resync":
                    for training in mine.values():
                        training.copy_from(theirs, optimizer=True)
                step += 1
                if setup.group_every and (step % setup.group_every == 0 or step == setup.steps):
                    group_history.append({"step": step, **_differences_by_group(theirs, mine, controls)})
                if step % max(1, setup.steps // 10) == 0 or step == 1 or len(indices) < setup.batch_size:
                    log(_row(record))
                if step >= setup.steps:
                    break
            else:
                for training in everyone:
                    training.end_epoch()
            epoch += 1
        finals = {
            "authors": theirs.state(),
            **{name: training.state() for name, training in mine.items()},
            **{name: twin.state() for name, twin in controls.items()},
        }
        checks = _checks(theirs, mine)
        encoder_state = ours.model.encoder.state_dict()
    summary = summarise(records, setup, input_diff, same_init, same_encoder, time.perf_counter() - started)
    summary["final_difference_by_group"] = {
        name: difference_by_group(state, finals["authors"]) for name, state in finals.items() if name != "authors"
    }
    summary["batchnorm_layers_worst"] = worst_batchnorm_layers(finals)
    summary["checks"] = checks
    if group_history:
        summary["group_history"] = group_history
    if setup.evaluate:
        summary["test_metrics"] = test_metrics(finals, encoder_state, setup)
        log(json.dumps(summary["test_metrics"]))
    return {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(setup).items()},
        "summary": summary,
        "records": records,
    }


def _differences_by_group(theirs, mine: dict, controls: dict) -> dict[str, dict[str, float]]:
    reference = theirs.state()
    return {name: difference_by_group(training.state(), reference) for name, training in {**mine, **controls}.items()}


def _checks(theirs: AuthorsTraining, mine: dict[str, OurTraining]) -> dict[str, Any]:
    """What rules candidates in or out without a tolerance: BatchNorm forward counts (an extra or a
    missing forward pass in training mode changes ``num_batches_tracked``), optimiser step counts
    (a skipped step, whose restore would then have run, leaves AdamW's ``step`` behind), and
    SyncBatchNorm modules in a one-process model."""
    from minimaxad.engine.distributed import SyncBatchNorm2d

    reference = theirs.state()
    tracked = {k: int(v) for k, v in reference.items() if k.endswith("num_batches_tracked")}
    their_steps = {int(s["step"]) for s in theirs.optimizer.state.values() if "step" in s}
    result: dict[str, Any] = {"authors_batchnorm_forwards": sorted(set(tracked.values()))}
    for name, training in mine.items():
        state = training.state()
        steps = {int(s["step"]) for s in training.run.optimizer.state.values() if "step" in s}
        result[name] = {
            "num_batches_tracked_equal": all(int(state[k]) == v for k, v in tracked.items()),
            "optimizer_steps": sorted(steps),
            "optimizer_steps_equal": steps == their_steps,
            "sync_batchnorm_modules": sum(
                isinstance(m, (SyncBatchNorm2d, torch.nn.SyncBatchNorm)) for m in training.model.modules()
            ),
        }
    return result


def worst_batchnorm_layers(finals: dict[str, dict[str, torch.Tensor]], top: int = 5) -> dict[str, list]:
    """Per BatchNorm layer, the relative difference of its running mean and variance from the
    authors'; for each run the ``top`` layers that differ most (with the controls' value there)."""
    reference = finals["authors"]
    layers = sorted({k.rsplit(".", 1)[0] for k in reference if k.endswith("running_var")})

    def per_layer(state: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            layer: relative_difference(state, reference, [f"{layer}.running_mean", f"{layer}.running_var"])
            for layer in layers
        }

    table = {name: per_layer(state) for name, state in finals.items() if name != "authors"}
    result = {}
    for name, values in table.items():
        if name.startswith("control"):
            continue
        worst = sorted(values, key=values.get, reverse=True)[:top]
        result[name] = [
            {
                "layer": layer,
                "var_norm": float(reference[f"{layer}.running_var"].double().norm()),
                name: round(values[layer], 4),
                **{c: round(v[layer], 4) for c, v in table.items() if c.startswith("control")},
            }
            for layer in worst
        ]
    return result


def test_metrics(
    states: dict[str, dict[str, torch.Tensor]], encoder_state: dict[str, torch.Tensor], setup: Setup
) -> dict[str, dict[str, float]]:
    """I-AUROC, P-AUROC and AUPRO-200 of each final network on the test split, all scored by our
    common path (float32), so that only the trained weights differ."""
    test_set = build_dataset("mvtec", setup.data, "test", image_size=setup.image_size, validate=False)
    return {name: score_state(state, encoder_state, setup.variant, test_set) for name, state in states.items()}


def score_state(
    state: dict[str, torch.Tensor], encoder_state: dict[str, torch.Tensor], variant: str, test_set
) -> dict[str, float]:
    """I-AUROC, P-AUROC and AUPRO-200 of one trained bottleneck + decoder (keys ``bottleneck.*``,
    ``decoder.*``) with ``encoder_state``, scored on ``test_set`` by our common path."""
    from minimaxad.engine.scoring import run_dataset
    from minimaxad.metrics import evaluate
    from minimaxad.models import MiniMaxAD

    model = MiniMaxAD(f"unireplknet_{variant}")
    missing, unexpected = model.encoder.load_state_dict(encoder_state, strict=False)  # theirs: 2 unused layers
    if missing or any(not k.startswith(("downsample_layers.3.", "norm3.")) for k in unexpected):
        raise RuntimeError(f"encoder layouts differ: missing {missing}, unexpected {unexpected}")
    for part in ("bottleneck", "decoder"):
        getattr(model, part).load_state_dict(
            {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        )
    outputs = run_dataset(model.eval(), test_set, batch_size=16, device="cpu")
    metrics = evaluate(outputs.scores, outputs.labels, outputs.maps, outputs.masks, aupro_exact=False)
    return {key: round(float(metrics[key]), 4) for key in ("i_auroc", "p_auroc", "aupro_200")}


# -- the spread over seeds ------------------------------------------------------------------------
@dataclass
class SeedSetup:
    """Whole trainings, theirs and ours, from each seed: ``epochs`` over the first ``images``
    training photos (all: None), scored on the whole test split."""

    seeds: tuple[int, ...] = (111, 1, 2, 3, 4)
    variant: str = "f"
    loss: str = "adc"
    image_size: int = 128
    batch_size: int = 8
    epochs: int = 15
    images: int | None = None
    data: Path = DEFAULT_DATA
    runs: tuple[str, ...] = ("authors", "ours", "ours-authors-order")


SEED_RUNS = {
    "authors": "their script: their init under the seed, their DataLoader(shuffle=True) on the global generator",
    "ours": "our fit's TrainingRun, --sampler seeded (the default order)",
    "ours-authors-order": "our fit's TrainingRun, --sampler authors (their batches)",
    "ours-exact": "our fit's TrainingRun, --sampler authors, every speed change switched off (variant 'exact')",
}


def train_authors_script(
    authors: SimpleNamespace, setup: SeedSetup, seed: int, items: list[dict[str, Any]]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[list[list[int]]]]:
    """Their loop from ``seed``: returns the trained state, their encoder's and each epoch's batches."""
    theirs = AuthorsTraining(
        authors, setup.variant, loss=setup.loss, image_size=setup.image_size, batch_size=setup.batch_size, seed=seed
    )
    # their scripts build the DataLoader before the network, but it draws nothing until iterated
    loader = torch.utils.data.DataLoader(range(len(items)), batch_size=setup.batch_size, shuffle=True)
    orders = []
    for _ in range(setup.epochs):
        theirs.start_epoch()
        batches = []
        for indices in loader:
            batches.append(indices.tolist())
            theirs.step(torch.stack([items[i]["image"] for i in batches[-1]]))
        theirs.end_epoch()
        orders.append(batches)
    return theirs.state(), theirs.encoder.state_dict(), orders


def train_ours(
    setup: SeedSetup, seed: int, items: list[dict[str, Any]], *, sampler: str, toggles: Iterable[str] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[list[list[int]]]]:
    """Our fit's training loop (:func:`minimaxad.engine.trainer.train` without the calibration) from
    ``seed``, random encoder; returns the trained state, the encoder's and each epoch's batches."""
    config = RunConfig(
        backbone=f"unireplknet_{setup.variant}",
        encoder_weights="none",
        loss=setup.loss,
        image_size=setup.image_size,
        batch_size=setup.batch_size,
        epochs=setup.epochs,
        seed=seed,
        device="cpu",
        workers=0,
        evaluate=False,
        checkpoint_every=0,
        val_fraction=0.0,
        sampler=sampler,
    )
    with tempfile.TemporaryDirectory() as folder:
        run = TrainingRun(config, Path(folder), ["seeds"], SINGLE_PROCESS)
        with _quiet_warnings():
            run.set_up(resume=False)
        apply_toggles(run, toggles)
        plan = run.plan(len(items))
        orders = []
        for epoch in run.remaining_epochs(plan):
            batches = []
            for batch in run.batches(items, epoch):
                batches.append(list(batch.indices))
                run.step(batch)
            run.end_epoch(epoch, plan)
            orders.append(batches)
        return run.model.trainable_state_dict(), run.model.encoder.state_dict(), orders


def spread_over_seeds(authors: SimpleNamespace | None, setup: SeedSetup, log=print) -> dict[str, Any]:
    """Train every run of ``setup.runs`` from every seed and score each on the test split."""
    train_set = build_dataset("mvtec", setup.data, "train", image_size=setup.image_size, validate=False)
    count = len(train_set) if setup.images is None else min(setup.images, len(train_set))
    items = [train_set[i] for i in range(count)]  # decoded once, the same tensors for every run
    test_set = build_dataset("mvtec", setup.data, "test", image_size=setup.image_size, validate=False)
    test_items = [test_set[i] for i in range(len(test_set))]
    log(
        f"{setup.data}: {count} training photos, {len(test_items)} test photos; variant {setup.variant}, "
        f"{setup.loss}, {setup.image_size}px, batch {setup.batch_size}, {setup.epochs} epochs, seeds {list(setup.seeds)}"
    )
    results: dict[str, dict[int, dict[str, float]]] = {run: {} for run in setup.runs}
    same_batches: dict[int, bool] = {}
    for seed in setup.seeds:
        their_orders = None
        for run in setup.runs:
            started = time.perf_counter()
            if run == "authors":
                if authors is None:
                    raise SystemExit("the 'authors' run needs their code (--authors-code)")
                state, encoder_state, orders = train_authors_script(authors, setup, seed, items)
                their_orders = orders
            elif run in ("ours", "ours-authors-order", "ours-exact"):
                sampler = "seeded" if run == "ours" else "authors"
                toggles = tuple(TOGGLES) if run == "ours-exact" else ()
                state, encoder_state, orders = train_ours(setup, seed, items, sampler=sampler, toggles=toggles)
                if sampler == "authors" and their_orders is not None:
                    same_batches[seed] = same_batches.get(seed, True) and orders == their_orders
            else:
                raise SystemExit(f"unknown run {run!r}; choose from {', '.join(SEED_RUNS)}")
            metrics = score_state(state, encoder_state, setup.variant, test_items)
            results[run][seed] = metrics
            log(f"seed {seed:4d} {run:20s} {json.dumps(metrics)} ({time.perf_counter() - started:.0f} s)")
    table = seed_table(results)
    return {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(setup).items()},
        "per_seed": {run: {str(k): v for k, v in values.items()} for run, values in results.items()},
        "table": table,
        "authors_order_batches_identical": {str(k): v for k, v in same_batches.items()},
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def seed_table(results: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
    """Mean +- std of each metric per run, and of the per-seed difference from the authors' run."""
    rows = []
    reference = results.get("authors", {})
    for run, per_seed in results.items():
        if not per_seed:
            continue
        row: dict[str, Any] = {"run": run, "seeds": len(per_seed)}
        for metric in ("i_auroc", "p_auroc", "aupro_200"):
            row[metric] = mean_std([m[metric] for m in per_seed.values()])
        if run != "authors" and reference:
            paired = [per_seed[s]["p_auroc"] - reference[s]["p_auroc"] for s in per_seed if s in reference]
            row["p_auroc_minus_authors"] = mean_std(paired) if paired else None
        rows.append(row)
    return rows


def format_seed_table(table: list[dict[str, Any]]) -> str:
    """The table as Markdown: mean +- std over seeds."""

    def cell(pair) -> str:
        return "-" if pair is None else f"{pair[0]:.3f} ± {pair[1]:.3f}"

    lines = [
        "| run | seeds | I-AUROC | P-AUROC | AUPRO-200 | P-AUROC minus the authors' (paired) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in table:
        lines.append(
            f"| {row['run']} | {row['seeds']} | {cell(row['i_auroc'])} | {cell(row['p_auroc'])} | "
            f"{cell(row['aupro_200'])} | {cell(row.get('p_auroc_minus_authors'))} |"
        )
    return "\n".join(lines)


def _row(r: dict[str, Any]) -> str:
    text = (
        f"step {r['step']:4d} batch {r['batch']:2d} {r['branch'] or '':4s} loss {r['loss_authors']:.6f} "
        f"|dloss| {r['loss_diff']:.2e} grad max|d| {r['grad_max_abs']:.2e} rel {r['grad_rel']:.2e} "
        f"weights max|d| {r['weight_max_abs']:.2e} rel {r['weight_rel']:.2e}"
    )
    for key in r:
        if key.endswith("_weight_rel") and key != "weight_rel":
            name = key[: -len("_weight_rel")]
            text += f" | {name}: |dloss| {r[f'{name}_loss_diff']:.2e} weights rel {r[key]:.2e}"
    return text


def summarise(
    records: list[dict[str, Any]], setup: Setup, input_diff: float, same_init: bool, same_encoder: bool, seconds: float
) -> dict[str, Any]:
    short = [r for r in records if r["batch"] < setup.batch_size]

    def worst(key: str, rows=records) -> float:
        return max((r[key] for r in rows), default=float("nan"))

    summary = {
        "steps": len(records),
        "seconds": round(seconds, 1),
        "initial_weights_identical": same_init,
        "initial_encoder_identical": same_encoder,
        "input_max_abs_diff": input_diff,
        "loss_diff_max": worst("loss_diff"),
        "grad_rel_max": worst("grad_rel"),
        "grad_max_abs_max": worst("grad_max_abs"),
        "weight_rel_final": records[-1]["weight_rel"] if records else float("nan"),
        "weight_max_abs_final": records[-1]["weight_max_abs"] if records else float("nan"),
        "first_step_grad_rel": records[0]["grad_rel"] if records else float("nan"),
        "short_batches": len(short),
        "short_batch_branches": [r["branch"] for r in short],
        "short_batch_branches_actual_limit": [r["branch_actual_limit"] for r in short],
        "short_batch_loss_diff_max": worst("loss_diff", short),
    }
    for key in records[-1] if records else ():
        if key.endswith("_weight_rel") and key != "weight_rel":
            name = key[: -len("_weight_rel")]
            summary[f"{name}_weight_rel_final"] = records[-1][key]
            summary[f"{name}_loss_diff_max"] = worst(f"{name}_loss_diff")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--authors-code",
        type=Path,
        default=Path(os.environ.get("MINIMAXAD_AUTHORS_CODE", SHARED / "authors_code")),
        help="a checkout of WangFengJiee/MiniMaxAD (default $MINIMAXAD_AUTHORS_CODE or ../shared/authors_code)",
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="an MVTec-layout category folder of real photos")
    ap.add_argument("--variant", default="f", choices=list("fpnt"), help="the authors build no bottleneck for A")
    ap.add_argument("--loss", default="adc", choices=sorted(SCRIPT_FOR_LOSS))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, help="only the first N training images (shorter epochs)")
    ap.add_argument("--seed", type=int, default=111)
    ap.add_argument("--mode", default="free", choices=["free", "resync"])
    ap.add_argument("--inputs", default="ours", choices=["ours", "authors"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument(
        "--control",
        nargs="?",
        const="initial",
        default="none",
        choices=["none", "initial", "every-step"],
        help="also run their step from weights perturbed by float32 rounding (2**-24 relative): at the "
        "start only ('initial', the default of a bare --control) or after every step",
    )
    ap.add_argument(
        "--controls", type=int, default=1, help="how many controls, each with its own perturbation (default 1)"
    )
    ap.add_argument(
        "--ours",
        default="fast",
        help=f"comma-separated variants of our step run side by side ({', '.join(VARIANTS)}); the first is "
        "'ours' in the records",
    )
    ap.add_argument("--group-every", type=int, default=0, help="record the difference by group every N steps")
    ap.add_argument("--evaluate", action="store_true", help="score the test split with each final network")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="instead of the step comparison: whole trainings from each seed (theirs and ours, --runs), "
        "scored on the test split; prints mean ± std over the seeds",
    )
    ap.add_argument("--epochs", type=int, default=15, help="with --seeds: epochs of each training")
    ap.add_argument(
        "--runs",
        default="authors,ours,ours-authors-order",
        help=f"with --seeds: comma-separated runs ({', '.join(SEED_RUNS)})",
    )
    ap.add_argument(
        "--synthetic",
        type=Path,
        help="with --seeds: write minimaxad's synthetic 'weave' category (64 training photos, seed 0) "
        "into this folder and use it as --data",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the records and the summary here")
    args = ap.parse_args(argv)
    if not args.authors_code.is_dir():
        print(f"skipped: the authors' code is not at {args.authors_code} (give --authors-code DIR)")
        return 0
    if args.synthetic is not None:
        from minimaxad.data import generate_synthetic_dataset

        generate_synthetic_dataset(
            args.synthetic,
            categories=("weave",),
            n_train=64,
            n_test_good=24,
            n_test_defect=6,
            image_size=args.image_size,
            seed=0,
            overwrite=True,
        )
        args.data = args.synthetic / "weave"
    if not args.data.is_dir():
        print(f"skipped: no data at {args.data} (give --data DIR, an MVTec-layout category folder)")
        return 0
    torch.set_num_threads(args.threads)
    authors = import_authors(args.authors_code)
    if args.seeds:
        seed_setup = SeedSetup(
            seeds=tuple(args.seeds),
            variant=args.variant,
            loss=args.loss,
            image_size=args.image_size,
            batch_size=args.batch_size,
            epochs=args.epochs,
            images=args.images,
            data=args.data,
            runs=tuple(r for r in args.runs.split(",") if r),
        )
        result = spread_over_seeds(authors, seed_setup)
        print(format_seed_table(result["table"]))
        print("their batches drawn by --sampler authors:", result["authors_order_batches_identical"])
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return 0
    setup = Setup(
        variant=args.variant,
        loss=args.loss,
        image_size=args.image_size,
        batch_size=args.batch_size,
        steps=args.steps,
        seed=args.seed,
        mode=args.mode,
        inputs=args.inputs,
        dtype=args.dtype,
        control=args.control,
        images=args.images,
        data=args.data,
        evaluate=args.evaluate,
        controls=args.controls,
        ours=tuple(v for v in args.ours.split(",") if v),
        group_every=args.group_every,
    )
    for name in setup.ours:
        variant_toggles(name)  # refuse an unknown name before any training
    result = compare(authors, setup)
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
