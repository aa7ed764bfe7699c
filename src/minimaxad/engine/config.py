"""Run configuration: one flat dataclass, filled from a preset and then from the command line."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minimaxad.files import atomic_write
from minimaxad.tiling import Tiling


@dataclass
class RunConfig:
    """Everything that defines a training run (saved beside the results as ``config.json``).

    Defaults are the authors' protocol (SPEC "Training protocol"); presets override some.
    """

    # data
    data: str | None = None
    format: str = "mvtec"
    categories: list[str] | None = None  # None: every category found
    unified: bool = False  # one model for all categories (else one model per category)
    image_size: int = 256
    crop_size: int | None = None
    test_domains: list[str] | None = None  # AeBAD-S test domains
    augment: bool = False  # AeBAD-S training augmentation
    extra_datasets: list[dict[str, Any]] = field(default_factory=list)  # merged unified training
    cache: bool = False
    # full-resolution tiling (minimaxad/tiling.py): None trains and scores whole photos at image_size
    tile_size: int | None = None
    tile_stride: int | None = None  # None: tile_size (no overlap)
    resize_long_side: int | None = None  # resize each photo's long side to this before tiling
    tile_blend: str = "mean"  # overlapping tile maps: mean | distance
    workers: int = 0
    skip_bad_images: bool = False
    # photos of more than 8 bits a channel (16-bit PNG/TIFF): the value read as white; None: measured
    # on the training photos (data/io.py measure_white_level), and stays None for 8-bit photos
    white_level: float | None = None
    # model
    backbone: str = "unireplknet_n"
    encoder_weights: str = "hub"  # path | hub | none
    # optimisation (authors: AdamW lr 0.005, betas 0.9/0.999, wd 1e-5, ExponentialLR 0.995/epoch)
    loss: str = "adc"
    p_hard: float = 0.9999
    p_lim: float = 0.9995
    epochs: int = 160
    max_steps: int | None = None  # stop after this many optimiser steps (quick trials, tests)
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    lr_gamma: float = 0.995
    seed: int = 111
    precision: str = "fp32"  # fp32 | bf16 (CUDA, or CPUs with AVX-512 BF16/AMX) | fp16 (CUDA only)
    channels_last: bool = False
    device: str = "auto"
    max_nonfinite_steps: int = 5
    # the protocol of the authors' script being reproduced (engine/protocol.py; a preset sets these)
    protocol: dict[str, Any] | None = None  # the whole Protocol as data; None: the "single" protocol
    drop_last: bool = False  # drop each epoch's short last batch (the authors' unified scripts)
    adc_limit_batch: str = "nominal"  # ADC pixel limit from the nominal batch size (authors) | "actual"
    sampler: str = "seeded"  # data order: "seeded" by (seed, epoch) | "authors" (their DataLoader's shuffle)
    # several processes (torchrun; see docs/distributed.md). batch_size above is the GLOBAL batch.
    sync_batchnorm: bool = True  # decoder BatchNorms use the global batch's statistics (as 1 process)
    adc_sync: str = "global"  # ADC thresholds from the gathered global batch (exact) | per-rank
    # evaluation and thresholds
    top_ratio: float = 0.01  # image score: mean of the top 1% pixels; 0 = max pixel
    val_fraction: float = 0.1  # normal training images held out to calibrate thresholds
    val_max_images: int = 200
    image_fpr: float = 0.01  # target false-positive rate on held-out normal images
    pixel_fpr: float = 0.005
    pixel_threshold_rule: str = "image_max_p90"  # engine.thresholds.PIXEL_RULES (measured best: docs/metrics.md)
    evaluate: bool = True
    bootstrap: int = 0
    # bookkeeping
    checkpoint_every: int = 1  # epochs between resumable checkpoints (0: only at the end)
    logger: list[str] | None = None  # also log to: csv | tensorboard | mlflow (engine/loggers.py)
    preset: str | None = None

    def tiling(self) -> Tiling | None:
        """The run's :class:`~minimaxad.tiling.Tiling` (tiles fed to the network at ``image_size``),
        or None without ``tile_size``; settings tiling cannot combine with are refused here."""
        if self.tile_size is None:
            if self.tile_stride is not None or self.resize_long_side is not None:
                raise ValueError("--tile-stride and --resize-long-side need --tile-size")
            return None
        clashes = {
            "a paper preset or --protocol (the paper resizes whole photos)": self.protocol is not None,
            "--crop-size": self.crop_size is not None,
            "--extra-data": bool(self.extra_datasets),
            "--test-domains": bool(self.test_domains),
        }
        for what, clash in clashes.items():
            if clash:
                raise ValueError(f"--tile-size cannot be combined with {what}; drop one of them")
        return Tiling(self.tile_size, self.tile_stride, self.resize_long_side, self.image_size, self.tile_blend)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data (what ``config.json`` and checkpoints hold)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """The inverse of :meth:`to_dict`: missing keys take their defaults, unknown ones raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration key(s): {', '.join(unknown)}")
        values = dict(values)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def updated(self, **overrides: Any) -> "RunConfig":
        """A copy with the non-None overrides applied (unknown keys are an error)."""
        merged = self.to_dict()
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return RunConfig.from_dict(merged)

    def save(self, path: Path) -> None:
        """The settings as indented JSON at ``path``, replaced atomically."""
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")  # never half-written
