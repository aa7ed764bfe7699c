"""MVTec AD 2's private test sets scored into the layout of MVTec's evaluation server.

For a photo ``<root>/<category>/<split>/<stem>.png`` the server wants (MVTec's public code utils,
``get_relative_anomaly_image_out_path``)::

    anomaly_images/<category>/<split>/<stem>.tiff               the anomaly map: float16, one channel
    anomaly_images_thresholded/<category>/<split>/<stem>.png    the defect mask: uint8, 0 / 255

both at the photo's own resolution. MVTec's checker (``check_and_prepare_data_for_upload.py``)
refuses any other file or folder beside those two, so they are written into ``OUTPUT/submission/``
and the record of how they were made into ``OUTPUT/submission.json`` next to it::

    OUTPUT/submission.json        checkpoint, photos, pixel threshold (and its note), files, per category
    OUTPUT/submission/            the folder to check and upload
        anomaly_images/...
        anomaly_images_thresholded/...

``test_public`` may be scored too (``test_public/{good,bad}/<stem>``, the folders kept), to compare
the files with the public ground truth offline; the checker and the server accept only the two
private sets, so such a folder is not one to upload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from minimaxad.data import mvtec_ad2
from minimaxad.data.io import DatasetError, list_images
from minimaxad.data.layout import require_dir, select_categories
from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.engine.runner import find_checkpoints
from minimaxad.engine.thresholds import thresholds_for
from minimaxad.files import atomic_write, check_writable_folder, inside

__all__ = ["SPLITS", "SUBMISSION_FOLDER", "RECORD", "write_mvtec_ad2_submission"]

PUBLIC_SET = "test_public"
SPLITS = (*mvtec_ad2.PRIVATE_SETS, PUBLIC_SET)  # what can be scored; the server takes the private two
SUBMISSION_FOLDER = "submission"  # OUTPUT/submission: only the two folders MVTec's checker allows
RECORD = "submission.json"  # beside it: the checker refuses any extra file inside the submission
MAPS, MASKS = "anomaly_images", "anomaly_images_thresholded"
UPLOAD_URL = "https://benchmark.mvtec.com"
CHECKER = "check_and_prepare_data_for_upload.py"
_FLOAT16_MAX = float(np.finfo(np.float16).max)

Echo = Callable[[str], None]


def write_mvtec_ad2_submission(
    checkpoint: Path,
    root: Path,
    output: Path,
    *,
    splits: Sequence[str] = mvtec_ad2.PRIVATE_SETS,
    categories: Sequence[str] | None = None,
    device: str = "auto",
    backend: str = "fused",
    batch_size: int = 16,
    encoder_weights: str | Path | None = None,
    pixel_threshold: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Any]:
    """Score MVTec AD 2's ``splits`` of ``root`` and write them in the evaluation server's layout.

    ``checkpoint``: a checkpoint file, a run folder with ``checkpoint.pt``, or a folder of per-category
    runs; each category is scored by the checkpoint that holds it and masked at that category's pixel
    threshold (``pixel_threshold`` overrides it). ``categories``: None = every category of ``root``
    that a checkpoint holds. ``splits``: ``test_private``, ``test_private_mixed`` and/or ``test_public``.

    Writes ``output/submission/anomaly_images/<category>/<split>/<stem>.tiff`` (float16 map at the
    photo's size), ``output/submission/anomaly_images_thresholded/<category>/<split>/<stem>.png``
    (0/255 mask, ``map >= pixel threshold``) and ``output/submission.json``; nothing under ``root``.
    A non-empty ``output`` is refused unless ``overwrite`` (which first removes ``output/submission``).
    Every problem found in the arguments or the data is raised before any file is written;
    ``submission.json`` is written last, so a folder without it is one whose run did not finish.

    Returns ``{"output", "submission", "record", "photos", "files", "categories", "complete",
    "warnings"}``: the folders and the record file (str), the photos scored and the files written,
    per category ``{"checkpoint", "pixel_threshold", "pixel_threshold_note", "splits": {split:
    {"photos", "anomaly_images", "anomaly_images_thresholded"}}}``, whether the submission holds what
    MVTec's checker requires (all 8 categories, both private sets, nothing else), and why not.
    """
    tifffile = _import_tifffile()
    splits = _check_splits(splits)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive number of photos per batch")
    root, output = Path(root).expanduser(), Path(output).expanduser()
    _check_output_apart_from_root(output, root)
    dirs = mvtec_ad2.category_dirs(root)
    owners = _checkpoints_by_category(checkpoint)
    selected, skipped = _select(dirs, owners, categories, root)
    photos = {cat: {split: _photos(root, dirs, cat, split) for split in splits} for cat in selected}
    _check_pixel_thresholds(owners, selected, pixel_threshold)
    _check_output_empty(output, overwrite)

    # everything is known to be in order: only now is anything written
    output = check_writable_folder(output, "submission output folder").resolve()
    submission = inside(output, SUBMISSION_FOLDER)
    if submission.is_dir():  # overwrite: files of a previous run must not linger among the new ones
        shutil.rmtree(submission)
    inside(output, RECORD).unlink(missing_ok=True)
    submission.mkdir()

    total = sum(len(files) for per_split in photos.values() for files in per_split.values())
    bar = _progress_bar(total, progress)
    summary: dict[str, dict[str, Any]] = {}
    try:
        for path in sorted({owners[cat] for cat in selected}, key=str):
            predictor = _load_predictor(path, device, backend, encoder_weights, pixel_threshold)
            for cat in [c for c in selected if owners[c] == path]:
                threshold = predictor.thresholds_for(cat).pixel
                if threshold.value is None:  # _check_pixel_thresholds read the same calibration: a bug if reached
                    raise ValueError(f"no pixel threshold for {cat!r} in {path} ({threshold.note}); please report this")
                summary[cat] = {
                    "checkpoint": str(path),
                    "pixel_threshold": threshold.value,
                    "pixel_threshold_note": threshold.note,
                    "splits": {},
                }
                for split in splits:
                    written = _score_split(
                        predictor, tifffile, submission, dirs[cat], cat, photos[cat][split], threshold.value, batch_size
                    )
                    summary[cat]["splits"][split] = written
                    if bar is not None:
                        bar.update(written["photos"])
            del predictor  # one model in memory at a time
    finally:
        if bar is not None:
            bar.close()

    summary = {cat: summary[cat] for cat in selected}
    warnings = _completeness(selected, splits, skipped)
    files = sum(s[MAPS] + s[MASKS] for c in summary.values() for s in c["splits"].values())
    record = {
        "format": "MVTec AD 2 evaluation server submission",
        "layout": f"{SUBMISSION_FOLDER}/{MAPS}/<category>/<split>/<stem>.tiff (float16 anomaly map at the photo's "
        f"size), {SUBMISSION_FOLDER}/{MASKS}/<category>/<split>/<stem>.png (uint8, 255 where map >= pixel threshold)",
        "root": str(root),
        "splits": list(splits),
        "categories": summary,
        "photos": total,
        "files": files,
        "complete": not warnings,
        "warnings": warnings,
    }
    record_path = atomic_write(inside(output, RECORD), json.dumps(record, indent=2) + "\n")
    _echo_summary(echo, summary, submission, record_path, total, files, warnings)
    return {
        "output": str(output),
        "submission": str(submission),
        "record": str(record_path),
        "photos": total,
        "files": files,
        "categories": summary,
        "complete": not warnings,
        "warnings": warnings,
    }


# -- checks, all made before anything is written ---------------------------------------------------
def _import_tifffile() -> Any:
    try:
        import tifffile
    except ImportError as exc:
        raise ImportError(
            "writing an MVTec AD 2 submission needs the tifffile package (the server reads float16 TIFF "
            "anomaly maps): pip install 'minimaxad[mvtec-ad2]'"
        ) from exc
    return tifffile


def _check_splits(splits: Sequence[str]) -> list[str]:
    if isinstance(splits, str):
        splits = [splits]
    chosen = list(dict.fromkeys(splits))
    unknown = [s for s in chosen if s not in SPLITS]
    if unknown or not chosen:
        raise ValueError(
            f"splits={list(splits)!r}; expected one or more of {', '.join(SPLITS)} "
            f"(the server scores {' and '.join(mvtec_ad2.PRIVATE_SETS)})"
        )
    return chosen


def _check_output_apart_from_root(output: Path, root: Path) -> None:
    """Nothing may be written into the dataset, nor the dataset lie inside the folder written."""
    out, data = output.resolve(), root.resolve()
    if out == data or data in out.parents or out in data.parents:
        raise ValueError(
            f"the submission output folder {output} and the dataset root {root} overlap; "
            f"choose an output folder outside the dataset (nothing is ever written into it)"
        )


def _check_output_empty(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"the submission output {output} is a file; name a folder (it is created if needed)")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"the submission output folder {output} is not empty; choose a new folder, or pass overwrite=True "
            f"(--overwrite) to replace {output / SUBMISSION_FOLDER} and {output / RECORD}"
        )


def _checkpoints_by_category(checkpoint: Path) -> dict[str, Path]:
    """Category -> the checkpoint that holds it; a category in two checkpoints is ambiguous."""
    owners: dict[str, Path] = {}
    for path in find_checkpoints(Path(checkpoint).expanduser()):
        for cat in read_checkpoint(path)["categories"]:
            if cat in owners:
                raise ValueError(
                    f"category {cat!r} is held by two checkpoints, {owners[cat]} and {path}; "
                    f"pass the one checkpoint file to use"
                )
            owners[cat] = path
    return owners


def _select(
    dirs: dict[str, Path], owners: dict[str, Path], categories: Sequence[str] | None, root: Path
) -> tuple[list[str], list[str]]:
    """The categories to score and those of ``root`` skipped because no checkpoint holds them."""
    in_data = sorted(dirs)
    if categories is not None:
        wanted = select_categories(in_data, categories, mvtec_ad2.FMT, root, mvtec_ad2.EXPECTED)
        unheld = [c for c in wanted if c not in owners]
        if unheld:
            raise ValueError(
                f"no checkpoint holds category {', '.join(map(repr, unheld))}; the checkpoint(s) hold "
                f"{', '.join(sorted(owners))}: train one for it, or leave it out of categories"
            )
        return wanted, []
    selected = [c for c in in_data if c in owners]
    if not selected:
        raise ValueError(
            f"none of the categories under {root} ({', '.join(in_data)}) is one the checkpoint(s) hold "
            f"({', '.join(sorted(owners))}); check the checkpoint and the dataset root"
        )
    return selected, [c for c in in_data if c not in owners]


def _photos(root: Path, dirs: dict[str, Path], category: str, split: str) -> list[Path]:
    """The photos of one category's split, each with a distinct output name."""
    if split == PUBLIC_SET:
        test = require_dir(
            dirs[category] / PUBLIC_SET, f"{mvtec_ad2.FMT} '{category}': public test folder", "test_public/{good,bad}"
        )
        found: list[Path] = []
        for kind in ("good", "bad"):
            folder = require_dir(
                test / kind, f"{mvtec_ad2.FMT} '{category}': public test folder", f"the {kind} test photos there"
            )
            found.extend(list_images(folder))
        if not found:
            raise DatasetError(f"{mvtec_ad2.FMT} '{category}': no images in {test}/good or {test}/bad")
    else:
        found = mvtec_ad2.list_private_images(root, split, [category])[category]
    # the server matches files by stem: 000_regular.png and 000_regular.jpg would write one .tiff
    seen: dict[str, Path] = {}
    for photo in found:
        key = str(photo.relative_to(dirs[category]).with_suffix("")).lower()
        if key in seen:
            raise DatasetError(
                f"{mvtec_ad2.FMT} '{category}': {seen[key]} and {photo} would both be written as {key}.tiff; "
                f"keep one photo per name in {photo.parent}"
            )
        seen[key] = photo
    return found


def _check_pixel_thresholds(owners: dict[str, Path], selected: list[str], pixel_threshold: float | None) -> None:
    """Every category has a pixel threshold, read from its checkpoint as :meth:`Predictor.thresholds_for`
    resolves it: a missing one stops the run before any model is loaded or file written."""
    missing = []
    states: dict[Path, dict[str, Any]] = {}
    for cat in selected:
        path = owners[cat]
        if path not in states:
            states[path] = read_checkpoint(path)
        pixel = thresholds_for(states[path].get("thresholds"), cat, pixel_threshold=pixel_threshold).pixel
        if pixel.value is None:
            missing.append(f"{cat!r} ({path}: {pixel.note})")
    if missing:
        raise ValueError(
            f"no pixel threshold for {', '.join(missing)}: the defect masks of {MASKS}/ need one. Calibrate "
            f"the model (minimaxad fit --format mvtec_ad2 calibrates on validation/good), or pass "
            f"--pixel-threshold (pixel_threshold=)"
        )


# -- scoring and writing ----------------------------------------------------------------------------
def _load_predictor(
    path: Path, device: str, backend: str, encoder_weights: str | Path | None, pixel_threshold: float | None
) -> Any:
    from minimaxad.inference.predict import Predictor

    return Predictor.from_checkpoint(
        path, device=device, backend=backend, encoder_weights=encoder_weights, pixel_threshold=pixel_threshold
    )


def _score_split(
    predictor: Any,
    tifffile: Any,
    submission: Path,
    category_dir: Path,
    category: str,
    photos: list[Path],
    threshold: float,
    batch_size: int,
) -> dict[str, int]:
    """Maps and masks of one category's split, ``batch_size`` photos at a time (full-resolution maps
    of a whole split would not fit in memory)."""
    written = {"photos": 0, MAPS: 0, MASKS: 0}
    for start in range(0, len(photos), batch_size):
        batch = photos[start : start + batch_size]
        result = predictor.predict(batch, batch_size=batch_size, category=category)
        for i, photo in enumerate(batch):
            rel = photo.relative_to(category_dir)
            amap = full_resolution_map(result.maps[i], result.sizes[i])
            tiff = inside(submission, MAPS, category, *rel.parent.parts, f"{rel.stem}.tiff")
            png = inside(submission, MASKS, category, *rel.parent.parts, f"{rel.stem}.png")
            tiff.parent.mkdir(parents=True, exist_ok=True)
            png.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tiff, to_float16(amap))
            _save_mask(amap >= threshold, png)
            written["photos"] += 1
            written[MAPS] += 1
            written[MASKS] += 1
    return written


def full_resolution_map(amap: Any, size: tuple[int, int]) -> np.ndarray:
    """``amap`` (2-D) as float32 at ``size`` = (width, height), bilinearly resized when it differs."""
    import torch
    import torch.nn.functional as F

    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"an anomaly map of shape {amap.shape}; expected a 2-D (height, width) map")
    width, height = size
    if amap.shape == (height, width):
        return amap
    resized = F.interpolate(
        torch.from_numpy(amap)[None, None], size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[0, 0].numpy()


def to_float16(amap: np.ndarray) -> np.ndarray:
    """``amap`` in float16, clipped to its finite range (a larger score would become infinity)."""
    return np.clip(amap, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)  # 2-D uint8: a one-channel (L) PNG


def _progress_bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="mvtec-ad2 submission", unit="img", dynamic_ncols=True)


# -- the report ------------------------------------------------------------------------------------
def _completeness(selected: list[str], splits: list[str], skipped: list[str]) -> list[str]:
    """Why MVTec's checker would refuse this submission (it wants exactly the 8 categories' two
    private sets); empty when it holds all of that and nothing else."""
    warnings = []
    if skipped:
        warnings.append(f"no checkpoint holds {', '.join(skipped)} of the dataset: not scored")
    missing = [c for c in mvtec_ad2.CATEGORIES if c not in selected]
    if missing:
        warnings.append(f"categories missing for the server: {', '.join(missing)}")
    others = [c for c in selected if c not in mvtec_ad2.CATEGORIES]
    if others:
        warnings.append(f"categories the server does not know: {', '.join(others)}")
    absent = [s for s in mvtec_ad2.PRIVATE_SETS if s not in splits]
    if absent:
        warnings.append(f"split(s) missing for the server: {', '.join(absent)}")
    if PUBLIC_SET in splits:
        warnings.append(f"{PUBLIC_SET} is for offline checks only: the server refuses it")
    return warnings


def _echo_summary(
    echo: Echo,
    summary: dict[str, dict[str, Any]],
    submission: Path,
    record: Path,
    photos: int,
    files: int,
    warnings: list[str],
) -> None:
    for cat, info in summary.items():
        counts = ", ".join(f"{split} {s['photos']}" for split, s in info["splits"].items())
        echo(
            f"  {cat}: {counts} photo(s); pixel threshold {info['pixel_threshold']:.6g} ({info['pixel_threshold_note']})"
        )
    echo(f"wrote {files} file(s) for {photos} photo(s) into {submission}; how they were made: {record}")
    if warnings:
        echo("MVTec's checker will refuse this folder as it is: " + "; ".join(warnings))
    echo(
        f"next: python {CHECKER} {submission}  (from MVTec's MVTecAD2_public_code_utils; it writes "
        f"{submission.name}.tar.gz into the current folder), then upload that archive at {UPLOAD_URL}"
    )
