"""MiniMaxAD as an anomalib model: ``anomalib train --model minimaxad.integrations.anomalib.MiniMaxAD``.

Written as anomalib writes its own models (a torch model, a loss module and an
:class:`~anomalib.models.components.AnomalibModule` with the training step, the optimiser and
the default pre-processing), on top of this package's network and functions rather than copies
of them:

* the network is :class:`minimaxad.models.MiniMaxAD` (frozen UniRepLKNet encoder, trained
  bottleneck and decoder), built as ``minimaxad fit`` builds it;
* the loss is :func:`minimaxad.losses.compute_loss` (``adc``, the paper's MiniMaxAD-fr, or
  ``global``, MiniMaxAD-fp; ``local``/``local-hm`` too);
* the anomaly map and the image score are :func:`minimaxad.anomaly_map.anomaly_map` and
  :func:`~minimaxad.anomaly_map.image_score` (mean of the top 1% pixels);
* the optimiser is :func:`minimaxad.engine.trainer.build_optimizer` (AdamW, lr 5e-3) with the
  paper's ExponentialLR(0.995) stepped once per epoch.

So one training step in anomalib's Engine changes the weights as ``TrainingRun.step`` does,
and the maps are ours. What anomalib adds on top (its resize of float images, the
normalisation of scores to [0, 1] and its F1-adaptive thresholds) is described in
docs/anomalib.md. Every checkpoint the Engine saves also holds a minimaxad checkpoint under
:data:`~minimaxad.engine.checkpoint.LIGHTNING_KEY`, so ``minimaxad predict``, ``serve`` and
``export`` read the Lightning file directly.

Needs the ``[anomalib]`` extra (``pip install "minimaxad[anomalib]"``).
"""

import copy
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    from anomalib import LearningType
    from anomalib.data import Batch, InferenceBatch
    from anomalib.metrics import Evaluator
    from anomalib.models.components import AnomalibModule
    from anomalib.post_processing import PostProcessor
    from anomalib.pre_processing import PreProcessor
    from anomalib.visualization import Visualizer
    from torchvision.transforms.v2 import Compose, Normalize, Resize
except ImportError as exc:  # the extra is optional: say how to get it
    raise ImportError(
        f"minimaxad.integrations.anomalib needs anomalib and torchvision ({exc}); install them with "
        f"pip install 'minimaxad[anomalib]' (it pins anomalib 2.7.0 with a torch/torchvision pair that works)"
    ) from exc

from minimaxad.anomaly_map import anomaly_map, image_score
from minimaxad.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from minimaxad.engine.checkpoint import LIGHTNING_KEY, build_checkpoint
from minimaxad.engine.config import RunConfig
from minimaxad.engine.trainer import TrainingError, _batchnorm_statistics, build_model, build_optimizer
from minimaxad.losses import LOSSES, compute_loss
from minimaxad.models import DEFAULT_BACKBONE
from minimaxad.models import MiniMaxAD as MiniMaxADNetwork

__all__ = ["MiniMaxAD", "MiniMaxADLoss", "MiniMaxADModel", "THRESHOLD_SOURCES"]

THRESHOLD_SOURCES = ("anomalib", "minimaxad")


class MiniMaxADModel(nn.Module):
    """The torch model anomalib runs and exports: our network, then our map and score.

    In training mode ``forward(images)`` returns ``(encoder_features, decoder_features)`` (what
    the loss needs); in eval mode an :class:`~anomalib.data.InferenceBatch` with ``anomaly_map``
    ``(B, 1, H, W)`` (bilinear upsampling, mean of the three levels, 5x5 Gaussian: exactly
    ``minimaxad``'s evaluation map) and ``pred_score`` ``(B,)`` (mean of the ``top_ratio``
    highest pixels), both raw (anomalib's post-processor normalises them).
    """

    def __init__(self, network: MiniMaxADNetwork, top_ratio: float = 0.01) -> None:
        super().__init__()
        self.network = network
        self.top_ratio = float(top_ratio)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Features while training; the raw anomaly map and image score otherwise."""
        encoder_features, decoder_features = self.network(images)
        if self.training:
            return encoder_features, decoder_features
        maps = anomaly_map(encoder_features, decoder_features, image_size=tuple(images.shape[-2:]))
        return InferenceBatch(pred_score=image_score(maps, self.top_ratio), anomaly_map=maps)


class MiniMaxADLoss(nn.Module):
    """:func:`minimaxad.losses.compute_loss` as a module (``adc``, ``global``, ``local``, ``local-hm``)."""

    def __init__(self, name: str = "adc", p_hard: float = 0.9999, p_lim: float = 0.9995) -> None:
        super().__init__()
        if name not in LOSSES and name != "local_hm":
            raise ValueError(f"loss={name!r}; choose one of {', '.join(LOSSES)} (the paper's is 'adc')")
        self.name, self.p_hard, self.p_lim = name, p_hard, p_lim

    def forward(
        self,
        encoder_features: Sequence[torch.Tensor],
        decoder_features: Sequence[torch.Tensor],
        image_size: tuple[int, int],
        limit_batch_size: int | None = None,
    ) -> torch.Tensor:
        """The loss in float32 (as ``TrainingRun`` computes it, whatever the forward's precision)."""
        return compute_loss(
            self.name,
            [f.float() for f in encoder_features],
            [f.float() for f in decoder_features],
            image_size,
            p_hard=self.p_hard,
            p_lim=self.p_lim,
            limit_batch_size=limit_batch_size,
        )


class MiniMaxAD(AnomalibModule):
    """MiniMaxAD (arXiv 2405.09933) as an anomalib model.

    Args:
        backbone: ``unireplknet_a|f|p|n|t`` (the paper's default ``n``) or ``unireplknet_micro``.
        encoder_weights: what ``minimaxad fit --encoder-weights`` takes: a path to the authors'
            ImageNet checkpoint, ``"hub"`` (the cache, else a download) or ``"none"`` (a random
            encoder: for tests, not comparable to the paper).
        image_size: the square side images are resized to (the paper: 256).
        loss: ``adc`` (MiniMaxAD-fr, feature-rich data), ``global`` (MiniMaxAD-fp), ``local``, ``local-hm``.
        p_hard, p_lim: the ADC loss's quantiles.
        lr, betas, weight_decay, lr_gamma: AdamW and the ExponentialLR stepped once per epoch.
        top_ratio: the image score is the mean of this fraction of the highest pixels (0: the max).
        adc_limit_batch: ``nominal`` (the ADC pixel limit from the datamodule's ``train_batch_size``,
            as the authors' scripts) or ``actual`` (from each batch's own size).
        thresholds: ``anomalib`` (its post-processor's F1-adaptive thresholds, which need
            anomalous validation images) or ``minimaxad`` (ours: quantiles of the validation set's
            NORMAL images at ``image_fpr``/``pixel_fpr``, written into the post-processor).
            Either way our calibration is kept in the checkpoint for ``minimaxad predict``.
        image_fpr, pixel_fpr: the false-positive rates of our calibration.
        pre_processor, post_processor, evaluator, visualizer: anomalib's components (True: the defaults).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        encoder_weights: str = "hub",
        image_size: int = 256,
        loss: str = "adc",
        p_hard: float = 0.9999,
        p_lim: float = 0.9995,
        lr: float = 0.005,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-5,
        lr_gamma: float = 0.995,
        top_ratio: float = 0.01,
        adc_limit_batch: str = "nominal",
        thresholds: str = "anomalib",
        image_fpr: float = 0.01,
        pixel_fpr: float = 0.005,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if adc_limit_batch not in ("nominal", "actual"):
            raise ValueError(f"adc_limit_batch={adc_limit_batch!r}; expected 'nominal' (the authors') or 'actual'")
        if thresholds not in THRESHOLD_SOURCES:
            raise ValueError(f"thresholds={thresholds!r}; expected one of {', '.join(THRESHOLD_SOURCES)}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size={image_size!r}; expected an int of at least 32 (the paper: 256)")
        if pre_processor is True:  # the default at our image size (the base class knows no size)
            pre_processor = self.configure_pre_processor((image_size, image_size))
        super().__init__(
            pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer
        )
        self.config = RunConfig(
            backbone=backbone,
            encoder_weights=str(encoder_weights),
            image_size=image_size,
            loss=loss,
            p_hard=p_hard,
            p_lim=p_lim,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            lr_gamma=lr_gamma,
            top_ratio=top_ratio,
            adc_limit_batch=adc_limit_batch,
            image_fpr=image_fpr,
            pixel_fpr=pixel_fpr,
        )
        self.threshold_source = thresholds
        self.loss = MiniMaxADLoss(loss, p_hard=p_hard, p_lim=p_lim)
        # the network exactly as `minimaxad fit` builds it (ImageNet encoder from a file or the hub, or random)
        self.model = MiniMaxADModel(build_model(self.config), top_ratio=top_ratio)
        self._nonfinite_in_a_row = 0  # as our trainer: skipped steps, then an error after max_nonfinite_steps
        self.calibration: dict[str, Any] = {}  # our thresholds, from the last validation's normal images
        self._normal_scores: list[np.ndarray] = []
        self._normal_maps: list[torch.Tensor] = []

    @property
    def network(self) -> MiniMaxADNetwork:
        """The :class:`minimaxad.models.MiniMaxAD` network inside."""
        return self.model.network

    # -- anomalib's defaults -------------------------------------------------------------------
    @staticmethod
    def configure_pre_processor(image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (antialiased) and normalise with ImageNet's statistics, as ours."""
        image_size = image_size or (256, 256)
        return PreProcessor(
            transform=Compose([Resize(image_size, antialias=True), Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
        )

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (the authors' scripts have none) and no sanity validation."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    # -- training -------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """The paper's AdamW on the bottleneck and decoder, ExponentialLR stepped once per epoch."""
        config = self.config
        optimizer = build_optimizer(
            self.network.trainable_parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}

    def training_step(self, batch: Batch, *args, **kwargs) -> dict[str, torch.Tensor] | None:
        """Forward and our loss; a non-finite loss skips the step (BatchNorm statistics restored), as ours."""
        del args, kwargs  # unused
        statistics = _batchnorm_statistics(self.network)
        saved = [tensor.clone() for tensor in statistics]
        images = batch.image
        encoder_features, decoder_features = self.model(images)
        loss = self.loss(encoder_features, decoder_features, tuple(images.shape[-2:]), self._limit_batch_size())
        value = float(loss.detach())
        if not math.isfinite(value):
            with torch.no_grad():
                for tensor, before in zip(statistics, saved):
                    tensor.copy_(before)
            self._nonfinite_in_a_row += 1
            if self._nonfinite_in_a_row >= self.config.max_nonfinite_steps:
                raise TrainingError(
                    f"the loss was non-finite for {self._nonfinite_in_a_row} steps in a row (last at step "
                    f"{self.global_step}); lower the learning rate (lr, now {self.config.lr}) or train in fp32"
                )
            warnings.warn(f"non-finite loss ({value}) at step {self.global_step}: step skipped", RuntimeWarning)
            return None  # Lightning skips the backward pass and the optimiser step
        self._nonfinite_in_a_row = 0
        self.log("train_loss", value, on_epoch=True, prog_bar=True, logger=True, batch_size=len(images))
        return {"loss": loss}

    def _limit_batch_size(self) -> int | None:
        """The ADC pixel limit's batch size: the datamodule's nominal one (or None: each batch's)."""
        if self.config.adc_limit_batch != "nominal":
            return None
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(datamodule, "train_batch_size", None)

    # -- validation: anomalib's metrics and thresholds, and our calibration -----------------------
    def on_validation_epoch_start(self) -> None:
        """Start collecting the normal images' scores and maps of this validation."""
        self._normal_scores, self._normal_maps = [], []

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Maps and scores of a validation batch; the normal images' are kept for our thresholds."""
        del args, kwargs  # unused
        predictions = self.model(batch.image)
        if batch.gt_label is not None:
            normal = batch.gt_label.reshape(-1) == 0
            if normal.any():
                self._normal_scores.append(predictions.pred_score[normal].detach().float().cpu().numpy())
                self._normal_maps.append(predictions.anomaly_map[normal][:, 0].detach().float().cpu())
        return batch.update(**predictions._asdict())

    def on_validation_epoch_end(self) -> None:
        """Our thresholds from the normal validation images (and into the post-processor if asked).

        Lightning runs this after the callbacks' hook, so the post-processor's own (F1-adaptive)
        thresholds are already set and ours replace them when ``thresholds="minimaxad"``.
        """
        scores = np.concatenate(self._normal_scores) if self._normal_scores else np.zeros(0, np.float32)
        maps = torch.cat(self._normal_maps) if self._normal_maps else None
        self._normal_scores, self._normal_maps = [], []
        if maps is None or len(scores) < 2:
            if self.threshold_source == "minimaxad":
                warnings.warn(
                    f"thresholds='minimaxad' needs at least 2 normal validation images, got {len(scores)}; "
                    f"the post-processor keeps anomalib's thresholds. Give the datamodule normal validation "
                    f"images (e.g. val_split_mode='from_test' or 'from_train')",
                    RuntimeWarning,
                )
            return
        from minimaxad.engine.thresholds import calibrate_thresholds

        self.calibration = calibrate_thresholds(
            scores,
            maps,
            image_fpr=self.config.image_fpr,
            pixel_fpr=self.config.pixel_fpr,
            source="normal validation images of anomalib's datamodule",
            seed=self.config.seed,
        )
        if self.threshold_source == "minimaxad" and isinstance(self.post_processor, PostProcessor):
            set_post_processor_thresholds(
                self.post_processor, self.calibration["image"]["value"], self.calibration["pixel"]["value"]
            )

    # -- export ------------------------------------------------------------------------------------
    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """anomalib's ONNX export (also the first half of ``to_openvino``) of the re-parameterized network.

        The fused form is the one ``minimaxad export`` and ``predict`` run: the same maps to float
        rounding, a graph with one convolution where training has several branches (smaller,
        faster, and about 4x quicker to export). The module itself keeps its training form.
        """
        # anomalib asks for opset 14 and converts down from the exporter's 18, which fails for some
        # nodes (it then keeps 18, after printing a traceback): ask for 18, which OpenVINO reads
        kwargs.setdefault("opset_version", 18)
        training_form = self.model.network
        self.model.network = copy.deepcopy(training_form).reparameterize().eval()
        try:
            return super().to_onnx(*args, **kwargs)
        finally:
            self.model.network = training_form

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """anomalib's entries, plus our own checkpoint (tensors and plain values) for ``minimaxad``."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[LIGHTNING_KEY] = self.minimaxad_checkpoint()

    def minimaxad_checkpoint(self) -> dict[str, Any]:
        """What ``minimaxad fit`` writes as ``checkpoint.pt``, for this model's current weights."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        category = getattr(datamodule, "category", None) or getattr(datamodule, "name", None)
        config = self.config.updated(
            batch_size=getattr(datamodule, "train_batch_size", None),
            epochs=getattr(trainer, "max_epochs", None) if trainer is not None else None,
        )
        checkpoint = build_checkpoint(
            self.network, config.to_dict(), categories=[str(category)] if category else [], thresholds=self.calibration
        )
        import anomalib

        checkpoint["trained_with"] = f"anomalib {anomalib.__version__}"
        return checkpoint


def set_post_processor_thresholds(post_processor: PostProcessor, image: float, pixel: float) -> None:
    """Make anomalib's post-processor label with raw thresholds ``image`` and ``pixel``.

    anomalib normalises a raw value ``v`` to ``(v - threshold) / (max - min) + 0.5`` (clamped to
    [0, 1]) and labels ``normalised > 1 - sensitivity`` (0.5 by default); so with its thresholds set
    to ours, a normalised score above 0.5 is exactly a raw score above our threshold.
    """
    with torch.no_grad():
        post_processor._image_threshold.fill_(float(image))
        post_processor._pixel_threshold.fill_(float(pixel))
