"""Per-category results: evaluation by category, mean over categories, files and table.

The paper reports, per benchmark, the metrics of every category and their mean over the
categories; ``summarize`` builds exactly that, ``write_metrics`` stores it as
``metrics.json`` + ``metrics.csv`` and ``format_table`` prints it in percent.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from minimaxad.files import atomic_write
from minimaxad.metrics import METRIC_KEYS, evaluate

#: confidence-interval keys (``(lo, hi)``) that may accompany the metrics
CI_KEYS = tuple(f"{k}_ci" for k in METRIC_KEYS)

#: column titles of the metrics table, the CSV and the seeds page
METRIC_HEADERS = {
    "i_auroc": "I-AUROC",
    "i_ap": "I-AP",
    "i_f1max": "I-F1max",
    "p_auroc": "P-AUROC",
    "p_ap": "P-AP",
    "p_f1max": "P-F1max",
    "aupro": "AUPRO",
    "aupro_200": "AUPRO-200",
    "seg_f1": "SegF1",
    "seg_f1_max": "SegF1max",  # the oracle: the best threshold chosen with the test masks (= P-F1max)
}

#: what each column of ``metrics.csv`` / the table means, for the metrics that are not the paper's
METRIC_DESCRIPTIONS = {
    "seg_f1": "pooled pixel F1 of map >= the pixel threshold calibrated on normal held-out images (MVTec AD 2)",
    "seg_f1_max": "oracle: best pooled pixel F1 over all thresholds, chosen on the test masks (= p_f1max)",
}

#: metrics reported by a run that follows no paper protocol (no preset, no ``--protocol``), on top of
#: the protocol's; a paper protocol reports exactly its ``reported`` (the authors' tables)
DEPLOYMENT_KEYS = ("seg_f1", "seg_f1_max")


def _scalar(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _interval(v: Any) -> tuple[float, float] | None:
    try:
        lo, hi = v
        return float(lo), float(hi)
    except (TypeError, ValueError):
        return None


def summarize(per_category: Mapping[str, Mapping[str, Any]], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"categories": {name: {metric: value}}, "mean": {metric: mean}}``.

    per_category: ``{name: evaluate(...) result}``. Only the scalar metrics (``METRIC_KEYS``)
    and their ``*_ci`` intervals are kept (thresholds, curves... are dropped). The mean of a
    metric is over the categories that have it (e.g. pixel metrics over the categories with
    masks); a NaN in a category makes its mean NaN. Intervals are not averaged (a mean of
    bounds is not an interval of the mean). Category order is kept. ``keys`` (default
    ``METRIC_KEYS``) restricts the metrics to those a protocol reports.
    """
    metric_keys = tuple(k for k in METRIC_KEYS if keys is None or k in keys)
    categories: dict[str, dict[str, Any]] = {}
    for name, res in per_category.items():
        row: dict[str, Any] = {}
        for k in metric_keys:
            if k in res and _scalar(res[k]) is not None:
                row[k] = _scalar(res[k])
        for k in CI_KEYS:
            if k in res and _interval(res[k]) is not None:
                row[k] = _interval(res[k])
        categories[str(name)] = row
    mean: dict[str, float] = {}
    for k in metric_keys:
        vals = [row[k] for row in categories.values() if k in row]
        if vals:
            mean[k] = float(np.mean(vals))
    return {"categories": categories, "mean": mean}


def _take(x: Any, sel: slice | np.ndarray) -> Any:
    """Items ``sel`` of an array or tensor (a view for slices)."""
    if isinstance(sel, slice) or isinstance(x, np.ndarray):
        return x[sel]
    import torch

    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(sel).to(x.device)]
    return np.asarray(x)[sel]


def evaluate_by_category(
    image_scores: Any,
    labels: Any,
    categories: Sequence[str],
    anomaly_maps: Any = None,
    masks: Any = None,
    has_mask: Any = None,
    pixel_thresholds: Mapping[str, float | None] | None = None,
    valid: Any = None,
    **kw: Any,
) -> dict[str, Any]:
    """Run :func:`minimaxad.metrics.evaluate` per category and :func:`summarize` the results.

    image_scores, labels, categories: (N,) in the same item order; anomaly_maps, masks:
    (N, H, W) or (N, 1, H, W) (optional). has_mask: optional (N,) bool, True where the item's
    mask is real ground truth (normal images count as real all-zero masks); a category gets
    pixel metrics only if all its items have masks, or a ``{category: bool}`` mapping. Extra
    keyword arguments go to ``evaluate`` (``bootstrap``, ``seed``...). pixel_thresholds:
    ``{category: pixel threshold or None}``, each category's calibrated threshold, for ``seg_f1``. valid:
    optional (N, H, W) bool, the pixels that belong to each map (photos of different sizes padded). With
    ``return_curves=True`` the summary also holds ``curves = {category: curves}``.
    Categories keep their order of first appearance. Items of a category that are contiguous
    are sliced without copying the maps.
    """
    cats = np.asarray([str(c) for c in categories])
    n = len(cats)
    if len(image_scores) != n or len(labels) != n:
        raise ValueError(
            f"categories has {n} entries, image_scores {len(image_scores)}, labels "
            f"{len(labels)}: give one category name per test item"
        )
    if has_mask is not None and not isinstance(has_mask, Mapping):
        has_mask = np.asarray(has_mask, dtype=bool).reshape(-1)
        if len(has_mask) != n:
            raise ValueError(f"has_mask has {len(has_mask)} entries for {n} items")
    if not hasattr(image_scores, "shape"):
        image_scores = np.asarray(image_scores)
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    names = list(dict.fromkeys(cats.tolist()))
    per_category: dict[str, dict[str, Any]] = {}
    curves: dict[str, Any] = {}
    for name in names:
        idx = np.flatnonzero(cats == name)
        # contiguous items: a slice is a view (no copy of that category's maps)
        sel = slice(int(idx[0]), int(idx[-1]) + 1) if idx[-1] - idx[0] + 1 == len(idx) else idx
        with_pixels = anomaly_maps is not None and masks is not None
        if with_pixels and has_mask is not None:
            with_pixels = (
                bool(has_mask.get(name, False)) if isinstance(has_mask, Mapping) else bool(has_mask[idx].all())
            )
        res = evaluate(
            _take(image_scores, sel),
            _take(labels, sel),
            anomaly_maps=_take(anomaly_maps, sel) if with_pixels else None,
            masks=_take(masks, sel) if with_pixels else None,
            pixel_threshold=(pixel_thresholds or {}).get(name),
            valid=_take(valid, sel) if with_pixels and valid is not None else None,
            **kw,
        )
        if "curves" in res:
            curves[name] = res.pop("curves")
        per_category[name] = res
    summary = summarize(per_category)
    if curves:
        summary["curves"] = curves
    return summary


def _json_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None  # NaN is not valid JSON
    return v


def _json_clean(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_clean(x) for x in v]
    return _json_value(v)


def _columns(summary: Mapping[str, Any]) -> list[str]:
    rows = [*summary.get("categories", {}).values(), summary.get("mean", {})]
    cols: list[str] = []
    for k in METRIC_KEYS:
        if any(k in r for r in rows):
            cols.append(k)
        if any(f"{k}_ci" in r for r in rows):
            cols += [f"{k}_ci_lo", f"{k}_ci_hi"]
    return cols


def write_metrics(summary: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` into ``out_dir`` (created if needed), atomically.

    JSON: ``{"categories": ..., "mean": ...}`` (intervals as [lo, hi], NaN as null). CSV: one
    row per category then a ``mean`` row; columns ``category`` and the metrics present
    (intervals as ``<metric>_ci_lo`` / ``_ci_hi``); empty cell where a value is absent.
    Returns (json_path, csv_path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cats = summary.get("categories", {})
    mean = summary.get("mean", {})
    doc = {
        "categories": {n: {k: _json_value(v) for k, v in r.items()} for n, r in cats.items()},
        "mean": {k: _json_value(v) for k, v in mean.items()},
    }
    for extra in ("protocol", "std", "categories_std", "seeds", "runs"):  # protocol name; seed spread
        if extra in summary:
            doc[extra] = _json_clean(summary[extra])
    json_path, csv_path = out / "metrics.json", out / "metrics.csv"
    atomic_write(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    cols = _columns(summary)
    spread = summary.get("categories_std")  # seed spread: a <metric>_std column after each metric
    if spread is not None:
        cols = [x for c in cols for x in ((c, f"{c}_std") if c in METRIC_KEYS else (c,))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["category", *cols])
    for name, row in [*cats.items(), ("mean", mean)]:
        std_row = (summary.get("std") if name == "mean" else (spread or {}).get(name)) or {}
        cells = []
        for c in cols:
            if c.endswith("_ci_lo") or c.endswith("_ci_hi"):
                iv = row.get(c[:-3])
                v = None if iv is None else iv[0 if c.endswith("_lo") else 1]
            elif c.endswith("_std") and c[:-4] in METRIC_KEYS:
                v = std_row.get(c[:-4])
            else:
                v = row.get(c)
            cells.append("" if v is None else repr(float(v)))
        w.writerow([name, *cells])
    atomic_write(csv_path, buf.getvalue())
    return json_path, csv_path


def format_table(summary: Mapping[str, Any]) -> str:
    """Fixed-width table in percent with one decimal, like the paper; ``-`` where absent.

    One row per category, a rule, then the mean row. Intervals are not shown (see the files).
    """
    cats = summary.get("categories", {})
    mean = summary.get("mean", {})
    rows = [*cats.values(), mean]
    cols = [k for k in METRIC_KEYS if any(k in r for r in rows)]
    names = [*cats.keys(), "mean"]
    w0 = max([len("category"), *map(len, names)])
    widths = [max(len(METRIC_HEADERS[c]), 6) for c in cols]

    spread = summary.get("categories_std")  # from seed_spread: cells become "mean ± std"
    if spread is not None:
        widths = [max(w, 12) for w in widths]

    def fmt(row: Mapping[str, Any], std: Mapping[str, Any] | None) -> list[str]:
        cells = []
        for c, w in zip(cols, widths):
            v = row.get(c)
            if v is None:
                cells.append("-".rjust(w))
            elif std is not None and std.get(c) is not None:
                cells.append(f"{100 * float(v):.1f} ± {100 * float(std[c]):.1f}".rjust(w))
            else:
                cells.append(f"{100 * float(v):{w}.1f}")
        return cells

    lines = ["  ".join(["category".ljust(w0), *(METRIC_HEADERS[c].rjust(w) for c, w in zip(cols, widths))])]
    lines.append("-" * len(lines[0]))
    for name, row in cats.items():
        lines.append("  ".join([name.ljust(w0), *fmt(row, None if spread is None else spread.get(name))]))
    lines.append("-" * len(lines[0]))
    lines.append("  ".join(["mean".ljust(w0), *fmt(mean, summary.get("std"))]))
    return "\n".join(lines)


def seed_spread(runs: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over runs that differ only in their seed (the paper's error bars).

    runs: ``{seed: summarize(...) result}``. Returns a summary whose ``categories`` and
    ``mean`` are the means over the seeds (of each category's metric, and of the mean over
    categories), ``categories_std`` and ``std`` the standard deviations over the seeds
    (population, ``ddof=0``: the spread of these runs, as ``numpy.std``), ``seeds`` and
    ``runs`` (each run's own summary, kept whole). A metric absent from one run is left out.
    """
    if not runs:
        raise ValueError("no runs to combine: give at least one seed")
    summaries = list(runs.values())
    names = list(dict.fromkeys(n for r in summaries for n in r.get("categories", {})))

    def combine(rows: list[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
        mean, std = {}, {}
        for k in METRIC_KEYS:
            values = [r.get(k) for r in rows]
            if values and all(_scalar(v) is not None for v in values):
                arr = np.asarray([float(v) for v in values])
                mean[k], std[k] = float(arr.mean()), float(arr.std())
        return mean, std

    categories, categories_std = {}, {}
    for name in names:
        categories[name], categories_std[name] = combine([r.get("categories", {}).get(name, {}) for r in summaries])
    mean, std = combine([r.get("mean", {}) for r in summaries])
    return {
        "categories": categories,
        "mean": mean,
        "categories_std": categories_std,
        "std": std,
        "seeds": [int(s) if str(s).lstrip("-").isdigit() else s for s in runs],
        "runs": {
            str(seed): {"categories": dict(r.get("categories", {})), "mean": dict(r.get("mean", {}))}
            for seed, r in runs.items()
        },
    }


def format_paper_table(summary: Mapping[str, Any], protocol: Any = None) -> str:
    """The results in the layout of the paper's table for the protocol: AeBAD-S (``averaged_over``
    domains) has one column per domain plus the mean and one row per metric (I-AUROC, AUPRO,
    then P-AUROC); the others one row per category plus the mean (:func:`format_table`).
    With a seed spread (``std``, from ``fit --seeds``) every cell is ``mean ± std``."""
    if protocol is None or protocol.averaged_over != "domains":
        return format_table(summary)
    cats = summary.get("categories", {})
    mean = summary.get("mean", {})
    spread = summary.get("categories_std") or {}
    names = [*cats.keys(), "mean"]
    order = [k for k in ("i_auroc", "aupro", "p_auroc") if k in protocol.reported] + [
        k for k in protocol.reported if k not in ("i_auroc", "aupro", "p_auroc")
    ]

    def cell(name: str, key: str) -> str:
        row = mean if name == "mean" else cats[name]
        if row.get(key) is None:
            return "-"
        std = (summary.get("std") or {}).get(key) if name == "mean" else spread.get(name, {}).get(key)
        return f"{100 * row[key]:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")

    cells = [[cell(n, k) for n in names] for k in order]
    widths = [max(len(n), *(len(r[j]) for r in cells)) for j, n in enumerate(names)]
    w0 = max(len("metric"), *(len(METRIC_HEADERS[k]) for k in order))
    lines = ["  ".join(["metric".ljust(w0), *(n.rjust(w) for n, w in zip(names, widths))])]
    lines.append("-" * len(lines[0]))
    for k, row in zip(order, cells):
        lines.append("  ".join([METRIC_HEADERS[k].ljust(w0), *(c.rjust(w) for c, w in zip(row, widths))]))
    return "\n".join(lines)


__all__ = [
    "summarize",
    "format_paper_table",
    "seed_spread",
    "evaluate_by_category",
    "write_metrics",
    "format_table",
    "CI_KEYS",
    "METRIC_KEYS",
    "DEPLOYMENT_KEYS",
    "METRIC_DESCRIPTIONS",
]
