"""Named presets: one per row of the paper's protocol table, plus small CPU presets.

Each preset is a partial :class:`~minimaxad.engine.config.RunConfig`; command-line options
override it. ``describe`` holds what the preset reproduces (shown by ``minimaxad presets``);
``protocol`` names the authors' script it follows (:mod:`minimaxad.engine.protocol`): its rules
(train batches, ADC limit, augmentation, masks, map, image score, AUPRO, what is reported) are
stored whole in the run's configuration, and its rules set ``drop_last``, ``adc_limit_batch``,
``top_ratio`` and ``augment``.
"""

from __future__ import annotations

from typing import Any

from minimaxad.engine.protocol import get_protocol

PRESETS: dict[str, dict[str, Any]] = {
    "goodsad": {
        "describe": "GoodsAD, 6 categories, one model per category, MiniMaxAD-fr (ADC), 224 px, 240 epochs",
        "format": "goodsad",
        "unified": False,
        "loss": "adc",
        "image_size": 224,
        "epochs": 240,
        "val_fraction": 0.0,
        "protocol": "single",
    },
    "mvtec-uni": {
        "describe": "MVTec AD, 15 classes, unified (one model for all), ADC, 256 px, 160 epochs",
        "format": "mvtec",
        "unified": True,
        "loss": "adc",
        "image_size": 256,
        "epochs": 160,
        "val_fraction": 0.0,
        "protocol": "unified",
    },
    "visa-uni": {
        "describe": "VisA, 12 classes, unified, ADC, 256 px, 160 epochs",
        "format": "visa",
        "unified": True,
        "loss": "adc",
        "image_size": 256,
        "epochs": 160,
        "val_fraction": 0.0,
        "protocol": "unified",
    },
    "visa": {
        "describe": "VisA, one model per class, MiniMaxAD-fp (global loss), 256 px, 150 epochs",
        "format": "visa",
        "unified": False,
        "loss": "global",
        "image_size": 256,
        "epochs": 150,
        "val_fraction": 0.0,
        "protocol": "visa-single",
    },
    "aebad": {
        "describe": "AeBAD-S, one model, global loss, resize 256 + centre crop 224, RandomResizedCrop/flip "
        "augmentation, 130 epochs; tested on the domains same, background, illumination, view",
        "format": "aebad",
        "unified": True,
        "loss": "global",
        "image_size": 256,
        "crop_size": 224,
        "augment": True,
        "epochs": 130,
        "test_domains": ["same", "background", "illumination", "view"],
        "val_fraction": 0.0,
        "protocol": "aebad",
    },
    "mad-sim": {
        "describe": "MAD-Sim, 20 LEGO toys, one model per toy, ADC, 400 px, 150 epochs",
        "format": "mad",
        "unified": False,
        "loss": "adc",
        "image_size": 400,
        "epochs": 150,
        "val_fraction": 0.0,
        "protocol": "mad-sim",
    },
    "aebad-mvtec": {
        "describe": "AeBAD-S merged with MVTec AD (MVTec resized to 224), unified, ADC, 20 epochs "
        "(the paper's ablation; give MVTec's root with --extra-data mvtec=ROOT)",
        "format": "aebad",
        "unified": True,
        "loss": "adc",
        "image_size": 256,
        "crop_size": 224,
        "augment": True,
        "epochs": 20,
        "test_domains": ["same", "background", "illumination", "view"],
        "val_fraction": 0.0,
        "protocol": "aebad-mvtec",
    },
    "realiad": {
        "describe": "Real-IAD, one model per class, ADC, 256 px, 50 epochs",
        "format": "realiad",
        "unified": False,
        "loss": "adc",
        "image_size": 256,
        "epochs": 50,
        "val_fraction": 0.0,
        "protocol": "realiad",
    },
    "realiad-uni": {
        "describe": "Real-IAD, unified, ADC, 256 px, 1 epoch (as in the authors' script), short last batch dropped",
        "format": "realiad",
        "unified": True,
        "loss": "adc",
        "image_size": 256,
        "epochs": 1,
        "val_fraction": 0.0,
        "protocol": "realiad-uni",
    },
    "cpu": {
        "describe": "quick CPU trial on your own data: variant F, 128 px, batch 8, 300 steps, "
        "10% of the normal images held out for thresholds",
        "backbone": "unireplknet_f",
        "image_size": 128,
        "batch_size": 8,
        "epochs": 1000,
        "max_steps": 300,
        "loss": "adc",
        "val_fraction": 0.1,
        "cache": True,
    },
    "demo": {
        "describe": "the built-in demo: synthetic textures, variant F with a random encoder, 96 px, 400 steps, "
        "global loss, lr 0.002 (with a random encoder on this data: better than ADC or lr 0.005; "
        "400 steps better than 200; 96 px as good as 128 with 200 training images and 0.7x the "
        "time), 20% of the normal images held out, "
        "image threshold for about 10% false alarms (so that most clear defects are caught)",
        "format": "mvtec",
        "unified": True,
        "backbone": "unireplknet_f",
        "encoder_weights": "none",
        "image_size": 96,
        "batch_size": 8,
        "epochs": 1000,
        "max_steps": 400,
        "loss": "global",
        "lr": 0.002,
        "val_fraction": 0.2,
        "image_fpr": 0.1,
        "cache": True,
    },
}


def get_preset(name: str) -> dict[str, Any]:
    """The preset's settings (without its description), its protocol expanded into the
    ``RunConfig`` keys it sets (``protocol`` as data, ``drop_last``, ``adc_limit_batch``,
    ``top_ratio``, ``augment``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    settings = {k: v for k, v in PRESETS[name].items() if k != "describe"}
    if "protocol" in settings:
        settings.update(get_protocol(settings.pop("protocol")).run_settings())
    return settings
