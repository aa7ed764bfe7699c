"""Saving an evaluation compactly (``evaluation.npz``) and rendering it as the HTML report.

``minimaxad test`` writes both; ``minimaxad report RUN_DIR`` re-renders the page from the
``.npz`` (for example with another threshold) without the model or the data. Maps are stored as
float16 at 128 px (64 px for test sets over 500 images): the report shows thumbnails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _stored_side(n_items: int, side: int) -> int:
    return min(side, 128 if n_items <= 500 else 64)


def save_evaluation(path: Path, evaluation, summary: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write scores, labels, categories, paths, small maps and masks, thresholds and metrics."""
    outputs = evaluation.outputs
    side = _stored_side(len(outputs.scores), outputs.maps.shape[-1])
    maps = _thumbnails(outputs.map_list(), side, "bilinear")
    arrays: dict[str, Any] = {
        "scores": outputs.scores.astype(np.float32),
        "labels": outputs.labels.astype(np.int8),
        "categories": np.asarray(outputs.categories, dtype=str),
        "paths": np.asarray(outputs.paths, dtype=str),
        "maps": maps.numpy().astype(np.float16),
        "map_range": np.asarray(
            _map_range(outputs.maps if outputs.sizes is None else outputs.maps[outputs.valid]), dtype=np.float64
        ),
        "meta": np.asarray(
            json.dumps({"summary": summary, "thresholds": evaluation.thresholds, "config": config}, default=str)
        ),
    }
    if outputs.masks is not None:
        masks = (
            outputs.masks if outputs.sizes is None else [m[:h, :w] for m, (h, w) in zip(outputs.masks, outputs.sizes)]
        )
        small = _thumbnails(masks, side, "nearest") > 0.5
        arrays["masks"] = small.numpy()
        arrays["has_mask"] = outputs.has_mask if len(outputs.has_mask) else outputs.masks.flatten(1).any(1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def _thumbnails(maps: torch.Tensor | list[torch.Tensor], side: int, mode: str) -> torch.Tensor:
    """``(N, side, side)`` float: each map (or mask) of a stack, or of a list of different sizes, resized."""
    align = False if mode == "bilinear" else None
    if isinstance(maps, torch.Tensor):
        return F.interpolate(maps[:, None].float(), size=(side, side), mode=mode, align_corners=align)[:, 0]
    small = [
        F.interpolate(m[None, None].float(), size=(side, side), mode=mode, align_corners=align)[0, 0] for m in maps
    ]
    return torch.stack(small) if small else torch.zeros((0, side, side))


def _map_range(maps: torch.Tensor) -> tuple[float, float]:
    """1st to 99.9th percentile of all pixels (on a sample): a common heatmap colour range."""
    flat = maps.reshape(-1)
    if flat.numel() > 2_000_000:
        flat = flat[torch.randint(flat.numel(), (2_000_000,), generator=torch.Generator().manual_seed(0))]
    lo, hi = torch.quantile(flat.float(), torch.tensor([0.01, 0.999])).tolist()
    return lo, max(hi, lo + 1e-6)


def load_evaluation(path: Path) -> dict[str, Any]:
    """The arrays saved by :func:`save_evaluation` (``path`` is the ``.npz`` or its run folder),
    with ``meta`` decoded to its ``{"summary", "thresholds", "config"}`` dict."""
    path = Path(path)
    if path.is_dir():
        path = path / "evaluation.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation.npz at {path}: run 'minimaxad test' (or fit) first")
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


def render_saved_evaluation(
    path: Path,
    html_path: Path,
    *,
    title: str = "minimaxad report",
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    max_gallery: int | None = 60,
    about: list[str] | None = None,
) -> Path:
    """The HTML report from an ``evaluation.npz``; thresholds default to the stored ones.

    ``about``: paragraphs shown first; without them, a model trained with a random encoder
    gets one saying so."""
    from minimaxad.reporting.html import ReportItem, write_report

    saved = load_evaluation(path)
    meta = saved["meta"]
    thresholds = meta.get("thresholds") or {}
    notes = {}
    image_value = image_threshold
    pixel_value = pixel_threshold
    per_category = thresholds.get("per_category") or {}
    for kind, given in (("image", image_threshold), ("pixel", pixel_threshold)):
        if given is not None:
            notes[kind] = f"set by the user ({given:g})"
        elif per_category:  # a unified model: each category its own calibrated threshold
            values = {c: t[kind]["value"] for c, t in per_category.items()}
            if kind == "image":
                image_value = values
            else:
                pixel_value = values
            first = next(iter(per_category.values()))[kind]["note"]
            notes[kind] = "per category: " + first.split(" of category ")[0] + " of each category"
        else:
            stored = thresholds.get(kind) or {}
            if kind == "image":
                image_value = stored.get("value")
            else:
                pixel_value = stored.get("value")
            notes[kind] = stored.get("note", "not calibrated")
    masks = saved.get("masks")
    has_mask = saved.get("has_mask")
    items = [
        ReportItem(
            path=str(saved["paths"][i]),
            category=str(saved["categories"][i]),
            label=int(saved["labels"][i]),
            score=float(saved["scores"][i]),
            anomaly_map=saved["maps"][i].astype(np.float32),
            mask=None
            if masks is None or (has_mask is not None and not has_mask[i] and saved["labels"][i] == 1)
            else masks[i],
        )
        for i in range(len(saved["scores"]))
    ]
    from minimaxad.reporting.results import summarize

    summary = meta.get("summary") or {}
    if "mean" not in summary and summary.get("categories"):
        summary = summarize(summary["categories"])
    about = list(about or [])
    if not about and str((meta.get("config") or {}).get("encoder_weights", "")).lower() == "none":
        about.append(
            "Encoder: RANDOM weights (--encoder-weights none), not the ImageNet UniRepLKNet the paper "
            "uses. The figures show the tool working on this data; they are not the paper's accuracy, "
            "which needs the ImageNet encoder (--encoder-weights hub or PATH)."
        )
    return write_report(
        html_path,
        metrics=summary,
        items=items,
        image_threshold=image_value,
        pixel_threshold=pixel_value,
        threshold_notes=notes,
        title=title,
        config=meta.get("config"),
        max_gallery=max_gallery,
        map_range=tuple(float(v) for v in saved["map_range"]),
        about=about,
    )
