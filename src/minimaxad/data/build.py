"""``build_dataset`` / ``build_unified``: one entry point over every supported layout."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from minimaxad.data import aebad, folder, goodsad, mad, mvtec, mvtec_ad2, realiad, visa
from minimaxad.data.base import AnomalyDataset, UnifiedDataset, relabel_categories
from minimaxad.data.transforms import RandomResizedCropFlip, Size

__all__ = ["build_dataset", "build_unified", "list_formats", "list_categories", "validation_split", "FORMATS"]


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    list_records: Callable[..., list]
    list_categories: Callable[..., list]
    splits: tuple[str, ...] = ("train", "test")
    validation_source: Optional[str] = None  # where a 'validation' split's normal photos are, e.g. validation/good

    @property
    def options(self) -> list[str]:
        """Reader-specific keyword options (beyond root, split, categories)."""
        params = inspect.signature(self.list_records).parameters
        return [p for p in params if p not in ("root", "split", "categories")]

    @property
    def has_validation(self) -> bool:
        """The format has a split of normal photos for calibration (``split="validation"``)."""
        return "validation" in self.splits


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("mvtec", "MVTec AD (and any MVTec-like tree)", mvtec.list_records, mvtec.list_categories),
        Format(
            "visa",
            "VisA, released (split_csv/1cls.csv + Data/) or converted 1cls",
            visa.list_records,
            visa.list_categories,
        ),
        Format("goodsad", "GoodsAD (MVTec-like, 6 categories of goods)", goodsad.list_records, goodsad.list_categories),
        Format("aebad", "AeBAD-S, 4 test domains (domain=...)", aebad.list_records, aebad.list_categories),
        Format("mad", "MAD-Sim / MAD-Real (LEGO toys)", mad.list_records, mad.list_categories),
        Format(
            "realiad", "Real-IAD (realiad_<res>/ + JSON split files)", realiad.list_records, realiad.list_categories
        ),
        Format(
            "mvtec_ad2",
            "MVTec AD 2 (train, validation/good for calibration, test_public)",
            mvtec_ad2.list_records,
            mvtec_ad2.list_categories,
            splits=mvtec_ad2.SPLITS,
            validation_source=mvtec_ad2.VALIDATION_SOURCE,
        ),
        Format(
            "folder",
            "your own folders: train/, test/<good|defect>/, optional masks",
            folder.list_records,
            folder.list_categories,
        ),
    )
}
_ALIASES = {
    "mvtec_ad": "mvtec",
    "mvtec-ad": "mvtec",
    "mvtecad": "mvtec",
    "mvtec_ad_2": "mvtec_ad2",
    "mvtec-ad2": "mvtec_ad2",
    "mvtec-ad-2": "mvtec_ad2",
    "mvtecad2": "mvtec_ad2",
    "visa_pytorch": "visa",
    "goods_ad": "goodsad",
    "pku-goodsad": "goodsad",
    "aebad_s": "aebad",
    "aebad-s": "aebad",
    "mad_sim": "mad",
    "mad-sim": "mad",
    "mad_real": "mad",
    "mad-real": "mad",
    "real_iad": "realiad",
    "real-iad": "realiad",
    "custom": "folder",
}


def list_formats() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return list(FORMATS)


def _format(name: str) -> Format:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[key]


def validation_split(format: str) -> Optional[str]:
    """Where the format's split of normal calibration photos is (``"validation/good"`` for
    ``mvtec_ad2``), or None when it has none (``fit`` then holds training photos out)."""
    fmt = _format(format)
    return fmt.validation_source if fmt.has_validation else None


def list_categories(format: str, root: Union[str, Path], **options: Any) -> list[str]:
    """Categories found in a dataset on disk (nothing is decoded)."""
    return _format(format).list_categories(Path(root), **options)


def build_dataset(
    format: str,
    root: Union[str, Path],
    split: str = "train",
    categories: Optional[Union[str, Iterable[str]]] = None,
    image_size: Size = 256,
    crop_size: Optional[Size] = None,
    domain: Optional[str] = None,
    augment: Union[bool, RandomResizedCropFlip] = False,
    cache: bool = False,
    skip_bad_images: bool = False,
    validate: Union[bool, str] = True,
    num_threads: Optional[int] = None,
    mask_rule: str = "binarise",
    white_level: Optional[float] = None,
    **options: Any,
) -> AnomalyDataset:
    """Open a dataset in one of :func:`list_formats` and check its files.

    Args:
        format: 'mvtec', 'visa', 'goodsad', 'aebad', 'mad', 'realiad', 'mvtec_ad2' or 'folder'.
        root: the dataset folder (see docs/data.md for each layout).
        split: 'train' (normal images) or 'test'; 'validation' (normal calibration photos, never
            augmented) where the format has one (``mvtec_ad2``).
        categories: a name or list; None = all (one dataset over several categories is
            the unified setting; every item keeps its category).
        image_size, crop_size: resize to (size, size), then optional center crop.
        domain: AeBAD-S test domain ('same', 'background', 'illumination', 'view').
        augment: training augmentation (AeBAD-S RandomResizedCrop + flip); train split only.
        cache: decode and resize everything now into memory (uint8).
        skip_bad_images: leave unreadable files out with a warning instead of raising.
        validate: True quick check of every file now, 'full' decode all, False none.
        mask_rule: 'binarise' (masks > 0.5), or AeBAD-S's 'relabel-max' / 'relabel-half'
            (see :class:`AnomalyDataset`).
        white_level: the value read as white in photos of more than 8 bits (a run measures it on
            its training photos: :func:`~minimaxad.data.io.measure_white_level`); None: full range.
        options: reader options: allow_missing_masks (mvtec, visa, goodsad, aebad, mad,
            realiad, mvtec_ad2, folder), split_file (visa), subset (mad), resolution and json_dir
            (realiad), category (folder: name of a single-category root).

    Returns:
        :class:`AnomalyDataset`; ``ds[i]`` is a dict with image (3, h, w), mask (1, h, w),
        label, category, path, defect_type, has_mask.
    """
    fmt = _format(format)
    if split not in fmt.splits:
        others = "" if split != "validation" else f" (format {fmt.name!r} has no validation split)"
        raise ValueError(f"split={split!r}; expected {' or '.join(map(repr, fmt.splits))}{others}")
    if augment and split != "train":
        raise ValueError("augment=True is for the training split; the test transform stays deterministic")
    if domain is not None:
        if fmt.name != "aebad":
            raise ValueError(f"domain={domain!r} is an AeBAD-S option; format {fmt.name!r} has no domains")
        options["domain"] = domain
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        raise TypeError(f"build_dataset: unknown option(s) {unknown} for format {fmt.name!r}; accepted: {fmt.options}")
    records = fmt.list_records(Path(root), split, categories, **options)
    cats = sorted({r.category for r in records})
    label = f"{fmt.name} {split} ({', '.join(cats[:4])}{', ...' if len(cats) > 4 else ''})"
    return AnomalyDataset(
        records,
        split="test" if split == "test" else "train",  # validation photos are normal, like the training ones
        image_size=image_size,
        crop_size=crop_size,
        augment=augment,
        cache=cache,
        skip_bad_images=skip_bad_images,
        validate=validate,
        num_threads=num_threads,
        name=label,
        mask_rule=mask_rule,
        white_level=white_level,
    )


Spec = Union[Mapping[str, Any], Sequence[Any]]


def build_unified(
    specs: Sequence[Spec], split: str = "train", prefix_categories: bool = False, **common: Any
) -> UnifiedDataset:
    """Several datasets merged into one (the paper merges AeBAD-S with MVTec AD).

    Each spec is ``(format, root)``, ``(format, root, categories)`` or a dict of
    :func:`build_dataset` arguments (which may override ``common`` ones, e.g. a different
    ``image_size`` per source); ``common`` holds arguments shared by all. Every item keeps
    its category; with ``prefix_categories`` names become ``"<format>/<category>"``.

    Example (paper, Table 7): ``build_unified([dict(format="aebad", root=a, image_size=256,
    crop_size=224), dict(format="mvtec", root=m, image_size=224)], split="train")``.
    """
    if not specs:
        raise ValueError("build_unified: specs is empty; expected at least one (format, root)")
    parts = []
    for spec in specs:
        if isinstance(spec, Mapping):
            kwargs = dict(spec)
        elif isinstance(spec, (list, tuple)) and 2 <= len(spec) <= 3:
            kwargs = {"format": spec[0], "root": spec[1]}
            if len(spec) == 3:
                kwargs["categories"] = spec[2]
        else:
            raise ValueError(
                f"build_unified: spec {spec!r}; expected (format, root), (format, root, categories) or a dict"
            )
        if "format" not in kwargs or "root" not in kwargs:
            raise ValueError(f"build_unified: spec {spec!r} needs 'format' and 'root'")
        args = {**common, **kwargs, "split": split}
        cache = args.pop("cache", False)
        ds = build_dataset(**args)
        if prefix_categories:
            ds.records = relabel_categories(ds.records, _format(args["format"]).name)
        if cache:
            ds.preload(args.get("num_threads"))
        parts.append(ds)
    return UnifiedDataset(parts)
