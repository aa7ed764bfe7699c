"""Self-contained HTML report: metrics, curves, score histograms and a gallery.

:func:`write_report` writes ONE HTML file with everything inline: images as
base64 ``data:`` URIs, plots as inline SVG, CSS in a ``<style>`` block, no
JavaScript and no external resource, so the file can be mailed, archived as a CI
artefact or opened offline (``file://``) in any browser.

The plots are drawn by :mod:`minimaxad.reporting.plots`, the heatmaps by
:mod:`minimaxad.reporting.heatmaps`; the page skeleton and its style sheet are the package
data ``static/report.html`` (a :class:`string.Template`) and ``static/report.css``. This
module writes the sections and the gallery into them.
Importing it loads numpy and Pillow only (torch comes with the curves, when a report is written).
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
from PIL import Image

from minimaxad import __version__
from minimaxad.files import atomic_write
from minimaxad.reporting.heatmaps import _as_2d, colorize, defect_mask, heatmap_overlay, to_data_uri
from minimaxad.reporting.plots import Marker, ScoreGroup, Series, colorbar, histogram, line_plot, series_style

__all__ = ["ReportItem", "write_report"]

# one threshold for every image, one per category, or none (no decisions: no misses or false alarms)
Threshold = Union[float, Mapping[str, float], None]

_E = html.escape


@dataclass
class ReportItem:
    """One test image.

    ``label``: 1 anomalous, 0 normal, -1 unknown (prediction-only runs).
    ``anomaly_map``: ``(H, W)`` float map at network resolution.
    ``mask``: ground-truth ``(H, W)`` bool mask (network resolution or original
    size) or ``None``. ``image``: the photo; ``None`` loads ``path`` with Pillow
    (a file that cannot be read is shown as a placeholder).
    """

    path: str
    category: str
    label: int
    score: float
    anomaly_map: np.ndarray
    mask: np.ndarray | None = None
    image: Image.Image | None = None


# ---------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------


def write_report(
    path: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None,
    items: Iterable[ReportItem],
    image_threshold: Threshold = None,
    pixel_threshold: Threshold = None,
    threshold_notes: Mapping[str, str] | None = None,
    title: str = "minimaxad report",
    config: Mapping[str, Any] | None = None,
    max_gallery: int | None = 60,
    curves: Mapping[str, Any] | None = None,
    map_range: tuple[float, float] | None = None,
    thumb_size: int = 256,
    cmap: Any = "jet",
    alpha: float = 0.5,
    jpeg_quality: int = 85,
    about: Sequence[str] | None = None,
) -> Path:
    """Write a single self-contained HTML report and return its path.

    ``about``: paragraphs of plain text shown first, under "What these results mean" (e.g.
    which encoder was used and what the figures can and cannot show).

    ``metrics``: ``{"categories": {name: {"i_auroc": 0.97, ..., "i_auroc_ci": [lo, hi]}}, "mean": {...}}``
    (fractions; shown in percent). ``image_threshold`` / ``pixel_threshold``: one
    float, or a ``{category: float}`` dict for per-category thresholds.
    ``threshold_notes``: ``{"image": "how ...", "pixel": "how ..."}`` (other keys are
    listed too). ``curves``: optional precomputed curves; ``{"roc": {name: (fpr, tpr)},
    "pr": {name: (recall, precision)}}`` replace/extend the image-level curves
    computed from ``items`` (same-named series are replaced); any other key with
    ``{"title", "xlabel", "ylabel", "series": {name: (x, y)}}`` adds a unit-square
    line plot (e.g. a pixel-level ROC or a PRO curve). ``map_range=(lo, hi)`` fixes
    the heatmap colour range; by default it is the 1st-99.9th percentile of all
    gallery maps. ``max_gallery=None`` shows every item. If ``path`` is an existing
    directory, ``report.html`` is written inside it.
    """
    items = _checked_items(items)
    infos = _classify(items, image_threshold)
    shown, omitted = _gallery_selection(items, infos, max_gallery)
    heat = _heatmap_range(items, shown, map_range)
    gallery = _gallery_section(
        items,
        infos,
        shown,
        omitted,
        max_gallery,
        heat,
        pixel_threshold,
        cmap=cmap,
        alpha=alpha,
        side=int(thumb_size),
        jpeg_quality=jpeg_quality,
        white_level=(config or {}).get("white_level"),  # deep photos shown as the model read them
    )
    has_thr = any(inf["thr"] is not None for inf in infos)
    sections = [
        ("metrics", "Metrics", _metrics_section(metrics)),
        ("summary", "Test set and decisions", _summary_section(items, infos, has_thr)),
        ("curves", "ROC and precision-recall curves", _curves_section(items, infos, image_threshold, curves)),
        ("histograms", "Score distributions", _histogram_section(items, infos, image_threshold)),
        (
            "thresholds",
            "How thresholds were chosen",
            _threshold_section(image_threshold, pixel_threshold, threshold_notes, heat.vmin, heat.vmax, heat.source),
        ),
        ("gallery", f"Gallery ({len(shown)} of {len(items)} images)", gallery),
        ("config", "Configuration", _config_section(config)),
    ]
    if about:
        sections.insert(0, ("about", "What these results mean", "".join(f"<p>{_E(p)}</p>" for p in about)))
    page = _page(title, sections, items, metrics)
    out = Path(path)
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, page)  # a full disk leaves the previous report complete


def _checked_items(items: Iterable[ReportItem]) -> list[ReportItem]:
    """The items as a list; a label other than 1, 0 or -1 is refused before anything is drawn."""
    items = list(items)
    for it in items:
        if it.label not in (-1, 0, 1):
            raise ValueError(f"ReportItem.label must be 1, 0 or -1, got {it.label!r} for {it.path!r}")
    return items


def _page(
    title: str, sections: list[tuple[str, str, str]], items: list[ReportItem], metrics: Mapping[str, Any] | None
) -> str:
    """The whole HTML document: ``static/report.html`` filled with the header, the sections
    and the footer, and ``static/report.css`` inlined."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    cats = sorted({str(it.category) for it in items} | set(map(str, ((metrics or {}).get("categories") or {}).keys())))
    nav = "".join(f'<a href="#{sid}">{_E(h.split(" (")[0])}</a>' for sid, h, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{_E(h)}</h2>{content}</section>' for sid, h, content in sections)
    return Template(_static_text("report.html")).substitute(
        title=_E(title),
        version=_E(__version__),
        generated=_E(now),
        css=_static_text("report.css"),
        n_images=len(items),
        n_labelled=sum(1 for it in items if it.label in (0, 1)),
        categories=_E(", ".join(cats) or "—"),
        nav=nav,
        sections=body,
    )


@functools.cache
def _static_text(name: str) -> str:
    """A file of ``minimaxad/reporting/static`` (package data, so it is there in an installed wheel too)."""
    return (resources.files("minimaxad.reporting") / "static" / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# per-image decisions (the summary, the curves and the gallery share them)
# ---------------------------------------------------------------------------


def _classify(items: Sequence[ReportItem], image_threshold: Threshold) -> list[dict[str, Any]]:
    """Per item: its score (NaN if not a number), threshold, decision (``score >= thr``, or None)
    and outcome: ``miss``, ``fa`` (false alarm), ``tp``, ``tn``, ``nodec`` (no threshold) or ``unk``."""
    infos = []
    for it in items:
        score = float(it.score) if _is_num(it.score) else float("nan")
        thr = _thr_for(image_threshold, str(it.category))
        pred = None if thr is None or not math.isfinite(score) else bool(score >= thr)
        if it.label not in (0, 1):
            outcome = "unk"
        elif pred is None:
            outcome = "nodec"
        elif it.label == 1:
            outcome = "tp" if pred else "miss"
        else:
            outcome = "fa" if pred else "tn"
        infos.append({"score": score, "thr": thr, "pred": pred, "outcome": outcome})
    return infos


def _thr_for(thr: Threshold, category: str) -> float | None:
    """The threshold of ``category``; None if there is none or it is not a finite number."""
    if thr is None:
        return None
    if isinstance(thr, Mapping):
        v = thr.get(category)
        return float(v) if _finite(v) else None
    return float(thr) if _finite(thr) else None


# ---------------------------------------------------------------------------
# sections, in page order
# ---------------------------------------------------------------------------


_METRIC_COLUMNS = (
    ("i_auroc", "Image AUROC"),
    ("i_ap", "Image AP"),
    ("i_f1max", "Image F1-max"),
    ("p_auroc", "Pixel AUROC"),
    ("p_ap", "Pixel AP"),
    ("p_f1max", "Pixel F1-max"),
    ("aupro", "AUPRO"),
    ("aupro_200", "AUPRO-200 (paper)"),
)


def _metrics_section(metrics: Mapping[str, Any] | None) -> str:
    metrics = metrics or {}
    cats = metrics.get("categories") or {}
    rows: list[tuple[str, Mapping[str, Any], bool]] = [(str(k), v or {}, False) for k, v in cats.items()]
    if isinstance(metrics.get("mean"), Mapping):
        rows.append(("mean", metrics["mean"], True))
    if not rows:
        return "<p class='note'>No metrics were given.</p>"
    known = [(k, t) for k, t in _METRIC_COLUMNS if any(_is_num(r[1].get(k)) for r in rows)]
    known_keys = {k for k, _ in _METRIC_COLUMNS}
    extra: list[str] = []
    for _, r, _ in rows:
        for k, v in r.items():
            if k not in known_keys and not k.endswith("_ci") and _is_num(v) and k not in extra:
                extra.append(k)
    head = "<tr><th>category</th>" + "".join(f"<th title='{_E(k)}'>{_E(t)} (%)</th>" for k, t in known)
    head += "".join(f"<th>{_E(k)}</th>" for k in extra) + "</tr>"
    body = []
    for name, r, is_mean in rows:
        cells = []
        for k, _ in known:
            ci = r.get(f"{k}_ci")
            txt = _pct(r.get(k))
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(c) for c in ci):
                txt += f' <span class="ci">[{_pct(ci[0])}, {_pct(ci[1])}]</span>'
            cells.append(f"<td class='num'>{txt}</td>")
        for k in extra:
            ci = r.get(f"{k}_ci")
            txt = _E(_num(r.get(k)))
            if isinstance(ci, (list, tuple)) and len(ci) == 2:
                txt += f' <span class="ci">[{_E(_num(ci[0]))}, {_E(_num(ci[1]))}]</span>'
            cells.append(f"<td class='num'>{txt}</td>")
        cls = " class='mean'" if is_mean else ""
        body.append(f"<tr{cls}><th>{_E(name)}</th>{''.join(cells)}</tr>")
    others = {k: v for k, v in metrics.items() if k not in ("categories", "mean") and _is_num(v)}
    other_html = ""
    if others:
        other_html = "<p class='note'>" + " · ".join(f"{_E(str(k))}: {_E(_num(v))}" for k, v in others.items()) + "</p>"
    ci_note = (
        "<p class='note'>Values in percent; brackets give confidence intervals where available. "
        "— means not computed (e.g. no pixel masks).</p>"
    )
    return f"<table class='metrics'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>{ci_note}{other_html}"


def _summary_section(items: Sequence[ReportItem], infos: Sequence[dict[str, Any]], has_thr: bool) -> str:
    cats = sorted({str(it.category) for it in items})
    head = "<tr><th>category</th><th>images</th><th>normal</th><th>anomalous</th><th>unknown</th>"
    if has_thr:
        head += "<th>missed defects</th><th>false alarms</th><th>accuracy (%)</th>"
    head += "</tr>"
    rows = []
    for c in cats + (["all"] if len(cats) > 1 else []):
        sel = [(it, inf) for it, inf in zip(items, infos) if c == "all" or str(it.category) == c]
        n0 = sum(1 for it, _ in sel if it.label == 0)
        n1 = sum(1 for it, _ in sel if it.label == 1)
        cells = [len(sel), n0, n1, len(sel) - n0 - n1]
        row = f"<tr><th>{_E(c)}</th>" + "".join(f"<td class='num'>{v}</td>" for v in cells)
        if has_thr:
            miss = sum(1 for _, inf in sel if inf["outcome"] == "miss")
            fa = sum(1 for _, inf in sel if inf["outcome"] == "fa")
            dec = sum(1 for _, inf in sel if inf["outcome"] in ("miss", "fa", "tp", "tn"))
            acc = _pct((dec - miss - fa) / dec) if dec else "—"
            row += f"<td class='num'>{miss}</td><td class='num'>{fa}</td><td class='num'>{acc}</td>"
        rows.append(row + "</tr>")
    return f"<table class='summary'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


_OVERALL = "all categories"


def _curves_section(
    items: Sequence[ReportItem],
    infos: Sequence[dict[str, Any]],
    image_threshold: Threshold,
    curves: Mapping[str, Any] | None,
) -> str:
    """Image-level ROC and PR plots (one curve per category, plus all categories pooled) and
    the plots of ``curves`` given by the caller."""
    lab = [
        (str(it.category), it.label, inf["score"])
        for it, inf in zip(items, infos)
        if it.label in (0, 1) and math.isfinite(inf["score"])
    ]
    cats = sorted({c for c, _, _ in lab})
    groups: list[tuple[str, list[int]]] = [(c, [i for i, t in enumerate(lab) if t[0] == c]) for c in cats]
    if len(cats) > 1:
        groups.append((_OVERALL, list(range(len(lab)))))
    # keyed by curve name, so that a given curve of the same name replaces a computed one
    roc_series: dict[str, Series] = {}
    pr_series: dict[str, Series] = {}
    roc_pts: list[Marker] = []
    pr_pts: list[Marker] = []
    notes: list[str] = []
    for gi, (name, idx) in enumerate(groups):
        y = np.array([lab[i][1] for i in idx], dtype=int)
        s = np.array([lab[i][2] for i in idx], dtype=float)
        res = _roc_pr(y, s)
        if res is None:
            notes.append(
                f"{name}: needs both normal and anomalous images ({int((y == 0).sum())} normal, "
                f"{int((y == 1).sum())} anomalous)"
            )
            continue
        overall = name == _OVERALL
        color, dash = ("#111111", "5 3") if overall else series_style(gi)
        width = 2.4 if overall else 1.8
        roc_series[name] = Series(
            f"{name} (AUROC {res['auroc'] * 100:.1f}%)", res["fpr"], res["tpr"], color, dash, width
        )
        pr_series[name] = Series(
            f"{name} (AP {res['ap'] * 100:.1f}%)", res["recall"], res["precision"], color, dash, width
        )
        # the pooled curve has an operating point only when one threshold serves every category
        thr = None if overall and isinstance(image_threshold, Mapping) else _thr_for(image_threshold, name)
        op = None if thr is None else _operating_point(y, s, thr)
        if op is not None:
            roc_pts.append(
                Marker(
                    op["fpr"],
                    op["tpr"],
                    color,
                    f"{name}: threshold {thr:.4g} → TPR {op['tpr'] * 100:.1f}%, FPR {op['fpr'] * 100:.1f}%",
                )
            )
            pr_pts.append(
                Marker(
                    op["tpr"],
                    op["precision"],
                    color,
                    f"{name}: threshold {thr:.4g} → "
                    f"recall {op['tpr'] * 100:.1f}%, precision {op['precision'] * 100:.1f}%",
                )
            )
    extra_plots = _given_curves(curves or {}, roc_series, pr_series)
    parts = []
    if roc_series:
        parts.append(
            line_plot(
                "ROC (image level)",
                "false positive rate",
                "true positive rate",
                list(roc_series.values()),
                diagonal=True,
                markers=roc_pts,
            )
        )
    if pr_series:
        parts.append(
            line_plot("Precision-recall (image level)", "recall", "precision", list(pr_series.values()), markers=pr_pts)
        )
    parts += extra_plots
    out = ""
    if parts:
        out += "<div class='plots'>" + "".join(f"<div class='plotbox'>{p}</div>" for p in parts) + "</div>"
    else:
        out += "<p class='note'>No curves: they need labelled normal and anomalous images.</p>"
    n_unk = sum(1 for it in items if it.label not in (0, 1))
    if n_unk:
        notes.append(f"{n_unk} image(s) with unknown label are excluded from the curves")
    if notes:
        out += "<ul class='note'>" + "".join(f"<li>{_E(n)}</li>" for n in notes) + "</ul>"
    return out


def _given_curves(curves: Mapping[str, Any], roc_series: dict[str, Series], pr_series: dict[str, Series]) -> list[str]:
    """Put the caller's ``roc``/``pr`` curves into the image-level plots (replacing same-named
    series) and return one more plot per other key of ``curves``. Unusable entries are skipped."""
    for key, xkey, ykey, target in (("roc", "fpr", "tpr", roc_series), ("pr", "recall", "precision", pr_series)):
        given = curves.get(key)
        if not isinstance(given, Mapping):
            continue
        for j, (name, v) in enumerate(given.items()):
            xy = _as_xy(v, xkey, ykey)
            if xy is None:
                continue
            target.pop(str(name), None)
            color, dash = series_style(len(target) + j)
            target[str(name)] = Series(str(name), xy[0], xy[1], color, dash)
    plots = []
    for key, spec in curves.items():
        if key in ("roc", "pr") or not isinstance(spec, Mapping) or not isinstance(spec.get("series"), Mapping):
            continue
        series = []
        for j, (name, v) in enumerate(spec["series"].items()):
            xy = _as_xy(v, "x", "y")
            if xy is not None:
                color, dash = series_style(j)
                series.append(Series(str(name), xy[0], xy[1], color, dash))
        if series:
            plots.append(
                line_plot(
                    str(spec.get("title", key)), str(spec.get("xlabel", "x")), str(spec.get("ylabel", "y")), series
                )
            )
    return plots


def _as_xy(v: Any, xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        if isinstance(v, Mapping):
            x = v.get(xkey, v.get("x"))
            y = v.get(ykey, v.get("y"))
        else:
            x, y = v[0], v[1]
        x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
        if x.size == 0 or x.size != y.size:
            return None
        return x, y
    except Exception:
        return None


def _roc_pr(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any] | None:
    """The image-level ROC and precision-recall curves as drawn, with AUROC and AP, from
    :mod:`minimaxad.metrics.ranking`; ``None`` unless both classes are present.

    ROC: one point per distinct score from (0, 0). PR: the step curve that AP sums, precision
    ``p_i`` held on the recall interval ``(r_{i-1}, r_i]``, from the highest threshold down to
    the first one reaching full recall.
    """
    # torch-backed: loaded when a report is written, not when this module is imported
    from minimaxad.metrics.ranking import auroc, average_precision, pr_curve, roc_curve

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    fpr, tpr, _ = roc_curve(s, y)
    precision, recall, _ = pr_curve(s, y)
    # pr_curve goes from the lowest threshold up and ends with the threshold-less point
    # (recall 0, precision 1): drop that point and walk from the highest threshold down
    precision, recall = precision[-2::-1], recall[-2::-1]
    # below the first threshold with full recall only false positives are added: the curve
    # would drop straight down along recall = 1, a segment that adds nothing to AP
    last = int(np.argmax(recall >= 1.0))
    precision, recall = precision[: last + 1], recall[: last + 1]
    steps_x = np.r_[0.0, np.repeat(recall[:-1], 2), recall[-1]]
    steps_y = np.r_[precision[0], precision[0], np.repeat(precision[1:], 2)]
    return {
        "fpr": fpr,
        "tpr": tpr,
        "auroc": auroc(s, y),
        "recall": steps_x,
        "precision": steps_y,
        "ap": average_precision(s, y),
        "n_pos": n_pos,
        "n_neg": n_neg,
    }


def _operating_point(labels: np.ndarray, scores: np.ndarray, thr: float) -> dict[str, float] | None:
    """FPR, TPR and precision of the decision ``score >= thr``; None unless both classes are present."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores, dtype=np.float64) >= thr
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    return {"fpr": fp / n_neg, "tpr": tp / n_pos, "precision": tp / (tp + fp) if tp + fp else 1.0}


def _histogram_section(items: Sequence[ReportItem], infos: Sequence[dict[str, Any]], image_threshold: Threshold) -> str:
    """One histogram of image scores per category: normal, anomalous and unlabelled images."""
    cats = sorted({str(it.category) for it in items})
    if not cats:
        return "<p class='note'>No images.</p>"
    plots = []
    for c in cats:
        sel = [(it, inf) for it, inf in zip(items, infos) if str(it.category) == c]
        groups = []
        for lab, name, color in (
            (0, "normal", "#1f77b4"),
            (1, "anomalous", "#d62728"),
            (-1, "unknown label", "#7f7f7f"),
        ):
            v = np.array([inf["score"] for it, inf in sel if (it.label if it.label in (0, 1) else -1) == lab], float)
            if v.size:
                groups.append(ScoreGroup(name, v, color))
        title = f"Scores: {c}" if len(cats) > 1 else "Image scores"
        plots.append(histogram(title, groups, _thr_for(image_threshold, c)))
    return "<div class='plots'>" + "".join(f"<div class='plotbox'>{p}</div>" for p in plots) + "</div>"


def _threshold_section(
    image_threshold: Threshold,
    pixel_threshold: Threshold,
    notes: Mapping[str, str] | None,
    vmin: float,
    vmax: float,
    range_src: str,
) -> str:
    notes = dict(notes or {})
    rows = []
    for key, label, thr in (
        ("image", "image score", image_threshold),
        ("pixel", "pixel (anomaly map)", pixel_threshold),
    ):
        note = notes.pop(key, None)
        rows.append(
            f"<tr><th>{_E(label)}</th><td class='num'>{_fmt_thr(thr)}</td>"
            f"<td>{_E(str(note)) if note else '<span class=note>not documented</span>'}</td></tr>"
        )
    for k, v in notes.items():
        rows.append(f"<tr><th>{_E(str(k))}</th><td class='num'>—</td><td>{_E(str(v))}</td></tr>")
    rule = (
        "<p>An image is flagged <b>anomalous</b> when its score is ≥ the image threshold; a pixel belongs to "
        "the predicted defect when its (bilinearly resized) anomaly-map value is ≥ the pixel threshold.</p>"
    )
    rng = (
        f"<p>Heatmap colour range (same for every gallery image, so heatmaps are comparable): "
        f"<b>{_E(_num(vmin, 5))}</b> to <b>{_E(_num(vmax, 5))}</b> ({_E(range_src)}).</p>"
    )
    return (
        f"<table class='thr'><thead><tr><th>threshold</th><th>value</th><th>how it was chosen</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{rule}{rng}"
    )


def _fmt_thr(thr: Threshold) -> str:
    if thr is None:
        return "not set"
    if isinstance(thr, Mapping):
        return "<br>".join(f"{_E(str(k))}: {_E(_num(v, 6))}" for k, v in thr.items()) or "not set"
    return _E(_num(thr, 6))


def _config_section(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "<p class='note'>No configuration was given.</p>"
    rows = []
    for k, v in _flatten(config):
        if isinstance(v, str):
            txt = v
        else:
            try:
                txt = json.dumps(v, default=str, ensure_ascii=False)
            except Exception:
                txt = repr(v)
        rows.append(f"<tr><th>{_E(k)}</th><td><code>{_E(txt)}</code></td></tr>")
    return f"<table class='config'><tbody>{''.join(rows)}</tbody></table>"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


# ---------------------------------------------------------------------------
# gallery
# ---------------------------------------------------------------------------


def _gallery_selection(
    items: list[ReportItem], infos: list[dict[str, Any]], max_gallery: int | None
) -> tuple[list[int], int]:
    """Indices shown in the gallery, worst first, and how many were left out."""
    order = _gallery_order(items, infos)
    if max_gallery is None:
        return order, 0
    if max_gallery < 0:
        raise ValueError(f"max_gallery must be >= 0 or None, got {max_gallery}")
    return order[:max_gallery], len(order) - min(len(order), max_gallery)


def _gallery_order(items: Sequence[ReportItem], infos: Sequence[dict[str, Any]]) -> list[int]:
    """Worst first: misses (lowest scores first), false alarms (highest first),
    the other labelled items by descending badness, then unlabelled by score."""
    # threshold-free badness: fraction of the other class on the wrong side
    by_cat: dict[str, dict[int, list[float]]] = {}
    for it, inf in zip(items, infos):
        if it.label in (0, 1) and math.isfinite(inf["score"]):
            by_cat.setdefault(str(it.category), {0: [], 1: []})[it.label].append(inf["score"])
    keys = []
    group_of = {"miss": 0, "fa": 1, "tp": 2, "tn": 2, "nodec": 3, "unk": 4}
    for i, (it, inf) in enumerate(zip(items, infos)):
        s, thr, g = inf["score"], inf["thr"], group_of[inf["outcome"]]
        if not math.isfinite(s):
            bad = -math.inf
        elif g in (0, 1, 2):
            bad = (thr - s) if it.label == 1 else (s - thr)
        elif g == 3:
            other = np.asarray(by_cat.get(str(it.category), {}).get(1 - it.label, []), float)
            if other.size == 0:
                bad = 0.0
            elif it.label == 1:
                bad = float(np.mean(other >= s))
            else:
                bad = float(np.mean(other <= s))
            bad += 1e-12 * ((-s) if it.label == 1 else s)  # tie-break: lower anomalous / higher normal first
        else:
            bad = s
        keys.append((g, -bad, str(it.path), i))
    return [k[3] for k in sorted(keys)]


@dataclass(frozen=True)
class _HeatRange:
    """The one colour range of every heatmap on the page, and where it came from."""

    vmin: float
    vmax: float
    source: str


def _heatmap_range(items: list[ReportItem], shown: list[int], map_range: tuple[float, float] | None) -> _HeatRange:
    """``map_range`` if given, else the 1st to 99.9th percentile of the shown maps (a few hot pixels
    do not wash out every other heatmap); always a finite, non-empty range."""
    if map_range is not None:
        vmin, vmax, source = float(map_range[0]), float(map_range[1]), "given"
    else:
        vals = [np.asarray(items[i].anomaly_map, dtype=np.float32).ravel() for i in shown]
        vals = [v[np.isfinite(v)] for v in vals]
        allv = np.concatenate(vals) if vals else np.zeros(0, np.float32)
        vmin, vmax = (float(x) for x in np.percentile(allv, [1.0, 99.9])) if allv.size else (0.0, 1.0)
        source = "1st to 99.9th percentile of all gallery anomaly maps"
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        vmin, vmax = 0.0, 1.0
    if vmax <= vmin:
        vmax = vmin + (abs(vmin) * 1e-6 or 1e-6)
    return _HeatRange(vmin, vmax, source)


def _gallery_section(
    items: list[ReportItem],
    infos: list[dict[str, Any]],
    shown: list[int],
    omitted: int,
    max_gallery: int | None,
    heat: _HeatRange,
    pixel_threshold: Threshold,
    *,
    cmap: Any,
    alpha: float,
    side: int,
    jpeg_quality: int,
    white_level: float | None = None,
) -> str:
    """The gallery: how it is ordered, the colour bar of the common heatmap range, the rows."""
    has_thr = any(inf["thr"] is not None for inf in infos)
    show_pred = pixel_threshold is not None
    rows = [
        _render_item(
            rank,
            items[i],
            infos[i],
            vmin=heat.vmin,
            vmax=heat.vmax,
            cmap=cmap,
            alpha=alpha,
            side=side,
            pixel_thr=_thr_for(pixel_threshold, str(items[i].category)),
            show_pred=show_pred,
            jpeg_quality=jpeg_quality,
            white_level=white_level,
        )
        for rank, i in enumerate(shown, 1)
    ]
    gal_head = (
        "<tr><th>#</th><th>photo</th><th>heatmap</th><th>ground truth</th>"
        + ("<th>predicted mask</th>" if show_pred else "")
        + "<th>details</th></tr>"
    )
    order_note = (
        "Ordered worst first: missed defects (lowest scores first), false alarms (highest scores first), "
        "then the other labelled images by how close they are to being wrong, then unlabelled images "
        "by descending score."
        if has_thr
        else "No image threshold: ordered by how badly each labelled image ranks against the other class "
        "(anomalous images scored below many normal ones first), then unlabelled images by descending score."
    )
    omitted_note = (
        f"<p class='note omitted'>{omitted} more image(s) omitted (gallery limited to {max_gallery}; "
        f"the omitted ones are the least problematic).</p>"
        if omitted
        else ""
    )
    return (
        f"<p class='note'>{_E(order_note)}</p>"
        f"<div class='cbarbox'>{colorbar(cmap, heat.vmin, heat.vmax)}<div class='note'>heatmap colour scale "
        f"({_E(str(cmap) if isinstance(cmap, str) else 'custom')}), common range {_E(_num(heat.vmin, 5))} – "
        f"{_E(_num(heat.vmax, 5))}, overlay opacity {alpha:g}</div></div>"
        + (
            f"<table class='gallery'><thead>{gal_head}</thead><tbody>{''.join(rows)}</tbody></table>"
            if rows
            else "<p class='note'>No images to show.</p>"
        )
        + omitted_note
    )


_OUTCOME = {
    "miss": ("miss", "MISSED DEFECT", "anomalous image scored below the threshold"),
    "fa": ("fa", "FALSE ALARM", "normal image scored at or above the threshold"),
    "tp": ("ok", "detected", "anomalous image correctly flagged"),
    "tn": ("ok", "correct", "normal image correctly passed"),
    "nodec": ("nd", "no threshold", "no image threshold: no decision"),
    "unk": ("unk", "label unknown", "ground truth unknown"),
}


def _render_item(
    rank: int,
    it: ReportItem,
    info: dict[str, Any],
    *,
    vmin: float,
    vmax: float,
    cmap: Any,
    alpha: float,
    side: int,
    pixel_thr: float | None,
    show_pred: bool,
    jpeg_quality: int,
    white_level: float | None = None,
) -> str:
    """One gallery row: photo, heatmap overlay, ground truth, predicted mask (if asked) and details.
    A picture that cannot be made becomes a placeholder saying why; the row is always written."""
    cls, badge, why = _OUTCOME[info["outcome"]]
    name = os.path.basename(str(it.path)) or str(it.path)
    photo, orig_size, err = _load_photo(it, side, white_level)
    try:
        amap = _as_2d(it.anomaly_map)
        map_ok = amap.size > 0
    except Exception:
        amap, map_ok = np.zeros((1, 1), np.float32), False
    cells = []
    # photo
    if photo is not None:
        cells.append(
            _fig(
                to_data_uri(photo, "JPEG", quality=jpeg_quality),
                f"photo {name}",
                f"photo {orig_size[0]}×{orig_size[1]}",
            )
        )
        target = photo.size
    else:
        cells.append(_fig_ph("image could not be read", "photo"))
        target = None
    # heatmap
    if map_ok:
        try:
            if photo is not None:
                ov = heatmap_overlay(photo, amap, vmin, vmax, alpha=alpha, cmap=cmap)
                cap = "heatmap overlay"
            else:
                ov = Image.fromarray(colorize(amap, vmin, vmax, cmap))
                ov.thumbnail((side, side), Image.Resampling.BILINEAR)
                cap = "heatmap (no photo)"
            if target is None:
                target = ov.size
            cells.append(_fig(to_data_uri(ov, "JPEG", quality=jpeg_quality), f"heatmap {name}", cap))
        except Exception as exc:
            map_ok = False
            cells.append(_fig_ph(f"heatmap failed: {type(exc).__name__}", "heatmap"))
    else:
        cells.append(_fig_ph(f"invalid anomaly map shape {np.shape(it.anomaly_map)}", "heatmap"))
    if target is None:
        target = (side, side)
    # ground truth
    if it.mask is not None:
        try:
            cells.append(
                _fig(to_data_uri(_mask_image(it.mask, target), "PNG"), f"ground truth {name}", "ground-truth mask")
            )
        except Exception as exc:
            cells.append(_fig_ph(f"mask unusable: {type(exc).__name__}", "ground-truth mask"))
    else:
        cells.append(_fig_ph("no mask", "ground-truth mask"))
    # prediction
    extra = ""
    if show_pred:
        if pixel_thr is not None and map_ok:
            pm = defect_mask(amap, pixel_thr, size=target)
            cells.append(_fig(to_data_uri(pm, "PNG"), f"predicted mask {name}", "predicted mask"))
            frac = float(np.mean(amap >= pixel_thr))
            extra = f"<div>map ≥ pixel threshold: <b>{frac * 100:.1f}%</b> of pixels</div>"
        else:
            cells.append(_fig_ph("no pixel threshold" if pixel_thr is None else "no map", "predicted mask"))
    label = {1: "anomalous", 0: "normal"}.get(it.label, "unknown")
    thr = info["thr"]
    decision = "—" if info["pred"] is None else ("anomalous" if info["pred"] else "normal")
    details = (
        f'<div class="fname" title="{_E(str(it.path))}">{_E(name)}</div>'
        f'<div class="fpath">{_E(str(it.path))}</div>'
        f"<div>category: <b>{_E(str(it.category))}</b></div>"
        f"<div>score: <b>{_E(_num(info['score'], 5))}</b>"
        + (f" (threshold {_E(_num(thr, 5))})" if thr is not None else "")
        + "</div>"
        f"<div>label: <b>{label}</b> · decision: <b>{decision}</b></div>"
        f"<div>map max: {_E(_num(float(np.nanmax(amap)) if map_ok and np.isfinite(amap).any() else None, 4))}</div>"
        + extra
        + (f'<div class="err">{_E(err)}</div>' if err else "")
        + f'<div><span class="badge b-{cls}" title="{_E(why)}">{_E(badge)}</span></div>'
    )
    return (
        f'<tr class="item {cls}" data-rank="{rank}"><td class="rank">{rank}</td>'
        + "".join(f"<td>{c}</td>" for c in cells)
        + f'<td class="det">{details}</td></tr>'
    )


def _load_photo(
    item: ReportItem, side: int, white_level: float | None = None
) -> tuple[Image.Image | None, tuple[int, int] | None, str | None]:
    """Return (thumbnail RGB, original size, error); photos of more than 8 bits are scaled to
    ``white_level`` (the model's), as the model read them."""
    try:
        if item.image is not None:
            im = item.image
            size = im.size
            thumb = im.convert("RGB")
        else:
            from PIL import ImageOps

            from minimaxad.data.io import to_rgb

            with Image.open(item.path) as im:
                # upright (EXIF) and any mode (16-bit, palette...) decoded as the data loader does
                width, height = im.size
                rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
                size = (height, width) if rotated else (width, height)
                try:
                    im.draft("RGB", (side, side))  # fast JPEG decoding at reduced scale
                except Exception:
                    pass
                thumb = to_rgb(ImageOps.exif_transpose(im), white_level)
        if thumb is item.image:
            thumb = thumb.copy()
        thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
        return thumb, size, None
    except Exception as exc:  # never crash on a bad photo
        return None, None, f"{type(exc).__name__}: {exc}"


def _mask_image(mask: Any, size: tuple[int, int]) -> Image.Image:
    m = _as_2d(mask, "mask", dtype=bool)
    im = Image.fromarray(np.where(m, 255, 0).astype(np.uint8))
    if im.size == size:
        return im
    # enlarging: keep crisp edges; shrinking: average so thin defects stay visible (grey)
    enlarge = size[0] * size[1] >= im.size[0] * im.size[1]
    return im.resize(size, Image.Resampling.NEAREST if enlarge else Image.Resampling.BOX)


def _fig(uri: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{_E(alt)}" loading="eager"><figcaption>{_E(caption)}</figcaption></figure>'


def _fig_ph(text: str, caption: str) -> str:
    return f"<figure>{_placeholder(text)}<figcaption>{_E(caption)}</figcaption></figure>"


def _placeholder(text: str) -> str:
    return f'<div class="ph">{_E(text)}</div>'


# ---------------------------------------------------------------------------
# number formatting
# ---------------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _finite(v: Any) -> bool:
    return _is_num(v) and math.isfinite(float(v))


def _pct(v: Any) -> str:
    """Fraction -> percent with 1 decimal (values > 1 are taken as already in %)."""
    if not _finite(v):
        return "—"
    v = float(v)
    return f"{v * 100.0:.1f}" if abs(v) <= 1.0 + 1e-9 else f"{v:.1f}"


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if _is_num(v):
        v = float(v)
        if math.isnan(v):
            return "NaN"
        return f"{v:.{digits}g}"
    return str(v)
