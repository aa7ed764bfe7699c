"""The experimental protocol of each of the authors' training scripts, as data.

The network, losses and maps are common to every benchmark; what differs from one script of
the authors to the next is everything around them: how the training batches are cut, how the
ADC pixel limit is counted, the augmentation, how test masks are made, how the map is merged
and smoothed, the image score, the AUPRO form and what is reported (SPEC "Per-benchmark
protocol, script by script"). A :class:`Protocol` names each of these choices; every preset
carries one, ``config.json`` and the checkpoint store it, and ``minimaxad test`` evaluates with
the stored one unless ``--protocol NAME`` picks another.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

# the allowed value of each rule (checked on construction, so a typo in a stored file is caught)
TRAIN_BATCHES = ("drop-last", "keep-last")
ADC_LIMIT_BATCH = ("nominal", "actual")
AUGMENTATIONS = ("none", "random-resized-crop-flip")
MASK_RULES = ("resize-binarise", "resize-crop-relabel-max", "resize-crop-relabel-binarise")
LEVEL_MERGES = ("mean", "sum")
SMOOTHINGS = ("gaussian-5x5-zero-pad", "scipy-gaussian-sigma4-reflect")
IMAGE_SCORES = ("top1pct-mean", "max-pixel")
AUPRO_FORMS = ("pooled", "per-image-mean")
EVALUATIONS = ("common", "aebad-evaluate")


@dataclass(frozen=True)
class Protocol:
    """One script's rules. Each field is a name from the tuples above; see ``RULES`` for what
    each name means."""

    name: str
    script: str  # the authors' script it reproduces
    train_batches: str = "keep-last"
    adc_limit_batch: str = "nominal"
    augmentation: str = "none"
    evaluation: str = "common"
    mask_rule: str = "resize-binarise"
    level_merge: str = "mean"
    smoothing: str = "gaussian-5x5-zero-pad"
    image_score: str = "top1pct-mean"
    aupro: str = "pooled"
    # metrics.json keys; on the common path the paper's AUPRO is aupro_200 (aupro: the exact one)
    reported: tuple[str, ...] = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro", "aupro_200")
    averaged_over: str = "categories"

    def __post_init__(self) -> None:
        for field, allowed in (
            ("train_batches", TRAIN_BATCHES),
            ("adc_limit_batch", ADC_LIMIT_BATCH),
            ("augmentation", AUGMENTATIONS),
            ("evaluation", EVALUATIONS),
            ("mask_rule", MASK_RULES),
            ("level_merge", LEVEL_MERGES),
            ("smoothing", SMOOTHINGS),
            ("image_score", IMAGE_SCORES),
            ("aupro", AUPRO_FORMS),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"protocol {self.name!r}: {field}={value!r}; expected one of {', '.join(allowed)}")
        object.__setattr__(self, "reported", tuple(self.reported))

    # -- what the run's flat settings become under this protocol
    @property
    def drop_last(self) -> bool:
        """``RunConfig.drop_last``: True when each epoch's short last batch is dropped."""
        return self.train_batches == "drop-last"

    @property
    def top_ratio(self) -> float:
        """``RunConfig.top_ratio`` of this image score (0 = max pixel)."""
        return 0.0 if self.image_score == "max-pixel" else 0.01

    def run_settings(self) -> dict[str, Any]:
        """The ``RunConfig`` keys this protocol sets (a preset applies them; the command line
        may still override each). ``augment`` switches the augmentation of the run's own
        dataset (AeBAD-S); datasets merged with ``--extra-data`` are never augmented."""
        return {
            "protocol": self.to_dict(),
            "drop_last": self.drop_last,
            "adc_limit_batch": self.adc_limit_batch,
            "top_ratio": self.top_ratio,
            "augment": self.augmentation != "none",
        }

    def to_dict(self) -> dict[str, Any]:
        """The protocol as plain data (``reported`` a list), as ``RunConfig.protocol`` stores it."""
        values = dataclasses.asdict(self)
        values["reported"] = list(self.reported)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Protocol":
        """The inverse of :meth:`to_dict`; an unknown key raises ``ValueError`` naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown protocol key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def describe(self) -> str:
        """One line: the rules that differ between scripts."""
        return (
            f"{self.name}: batches {self.train_batches}, ADC limit {self.adc_limit_batch} batch, "
            f"augmentation {self.augmentation}, masks {self.mask_rule}, map {self.level_merge} of levels + "
            f"{self.smoothing}, image score {self.image_score}, AUPRO {self.aupro}, "
            f"reported {'/'.join(self.reported)}, averaged over the {self.averaged_over}"
        )


#: what each rule's value means (``minimaxad presets -v`` prints it)
RULES: dict[str, str] = {
    "drop-last": "the short last batch of each epoch is dropped (DataLoader drop_last=True): floor(N/B) steps",
    "keep-last": "the short last batch is trained on: ceil(N/B) steps",
    "nominal": "ADC pixel limit image_size^2 * batch_size * (1 - p_lim) with the nominal batch size, "
    "the short last batch too",
    "actual": "ADC pixel limit from the size of the batch at hand",
    "random-resized-crop-flip": "RandomResizedCrop(crop, scale 0.7-1, bicubic) of the original photo + flip",
    "resize-binarise": "masks resized like the image (bilinear), > 0.5",
    "resize-crop-relabel-max": "masks Resize(image) + CenterCrop(crop) + ToTensor; an anomalous image whose "
    "cropped mask is empty is relabelled normal; only max-valued pixels count",
    "resize-crop-relabel-binarise": "AeBAD-S masks as above (crop-emptied anomalies relabelled normal), "
    "divided by their max, > 0.5 (evaluation_batch); MVTec AD masks > 0.5",
    "mean": "mean over the 3 levels of 1 - cos, bilinear (align_corners=True)",
    "sum": "sum over the 3 levels of 1 - cos, bilinear (align_corners=True)",
    "gaussian-5x5-zero-pad": "normalised 5x5 Gaussian, sigma 4, zero padding (evaluation_batch)",
    "scipy-gaussian-sigma4-reflect": "scipy.ndimage.gaussian_filter(sigma=4) per image (33 taps, reflect)",
    "top1pct-mean": "image score = mean of the top 1% pixels",
    "max-pixel": "image score = max pixel",
    "pooled": "AUPRO over the regions of all test images at once: aupro_200 the authors' 200-threshold form "
    "(the paper's), aupro the exact one",
    "per-image-mean": "AUPRO = mean over anomalous images of each image's own 200-threshold AUPRO",
    "common": "the authors' evaluation_batch (per category)",
    "aebad-evaluate": "the authors' evaluate() of train_single_AeBAD.py (per domain)",
}

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("unified", "train_multi_MVTecAD.py / train_multi_ViSA.py", train_batches="drop-last"),
        Protocol("single", "train_single_GoodsAD.py"),
        Protocol("visa-single", "train_single_ViSA.py", image_score="max-pixel"),
        Protocol(
            "aebad",
            "train_single_AeBAD.py",
            augmentation="random-resized-crop-flip",
            evaluation="aebad-evaluate",
            mask_rule="resize-crop-relabel-max",
            level_merge="sum",
            smoothing="scipy-gaussian-sigma4-reflect",
            image_score="max-pixel",
            aupro="per-image-mean",
            reported=("i_auroc", "p_auroc", "aupro"),
            averaged_over="domains",
        ),
        Protocol(
            "aebad-mvtec",
            "train_multi_AeBADMVTecAD.py",
            train_batches="drop-last",
            augmentation="random-resized-crop-flip",
            mask_rule="resize-crop-relabel-binarise",
            averaged_over="test sets (15 MVTec AD classes + 4 AeBAD-S domains)",
        ),
        Protocol("realiad", "train_single_RealIAD.py"),
        Protocol("realiad-uni", "train_multi_RealIAD.py", train_batches="drop-last"),
        Protocol("mad-sim", "(the paper's MAD-Sim setting; no script in the authors' repository)"),
    )
}


def get_protocol(name_or_values: str | Mapping[str, Any] | Protocol | None) -> Protocol:
    """A protocol by name (see ``PROTOCOLS``), from a stored dict, or the default (``single``)."""
    if isinstance(name_or_values, Protocol):
        return name_or_values
    if name_or_values is None:
        return PROTOCOLS["single"]
    if isinstance(name_or_values, str):
        if name_or_values not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name_or_values!r}; choose one of {', '.join(PROTOCOLS)}")
        return PROTOCOLS[name_or_values]
    return Protocol.from_dict(name_or_values)
