"""The report's plots, as hand-written inline SVG: line plots (ROC, PR, PRO), score
histograms and the heatmap colour bar.

No plotting library: a plot is a few kilobytes of SVG text inside the page, so the report
stays one small self-contained file that any browser draws. Nothing here computes a metric:
the curves are given (the image-level ones come from :mod:`minimaxad.metrics.ranking`), and
long ones are thinned with :func:`~minimaxad.metrics.ranking.downsample_idx` before drawing.

Styling (fonts, the ``grid``/``ax``/``thr`` line classes) is in ``static/report.css``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from minimaxad.reporting.heatmaps import get_colormap

__all__ = ["Series", "Marker", "ScoreGroup", "series_style", "line_plot", "histogram", "colorbar"]

_E = html.escape

_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_DASHES = ("", "6 3", "2 2", "8 3 2 3")
# a polyline of more points than this looks no different, it only makes the page bigger
_MAX_CURVE_POINTS = 2000


def series_style(i: int) -> tuple[str, str]:
    """Colour and dash pattern of the ``i``-th series: the ten palette colours solid, then dashed."""
    return _PALETTE[i % len(_PALETTE)], _DASHES[(i // len(_PALETTE)) % len(_DASHES)]


@dataclass(frozen=True)
class Series:
    """One curve of a line plot; ``label`` goes in the legend and in the curve's tooltip."""

    label: str
    x: Any
    y: Any
    color: str
    dash: str = ""
    width: float = 1.8


@dataclass(frozen=True)
class Marker:
    """One point drawn as an open circle (an operating point), with a tooltip."""

    x: float
    y: float
    color: str
    label: str


class ScoreGroup(NamedTuple):
    """The scores of one class in a histogram, drawn as translucent bars of one colour."""

    label: str
    scores: np.ndarray
    color: str


class _LegendEntry(NamedTuple):
    label: str
    color: str
    dash: str
    kind: str  # "line", "box" (histogram bars) or "circle" (markers)


# ---------------------------------------------------------------------------
# axes
# ---------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` ticks between ``lo`` and ``hi`` at multiples of 1, 2, 2.5 or 5 times a power of 10."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = mag
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = m * mag
        if step >= raw * 0.999:
            break
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-6:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)  # not "-1.4e-17" for the zero tick
        v += step
    return ticks


def _tick_label(v: float) -> str:
    s = f"{v:.4g}"
    return "0" if s in ("-0", "0") else s


class _Frame:
    """The plotting area of one plot (``x0, y0, w, h`` in SVG pixels) and its data limits."""

    def __init__(self, x0: float, y0: float, w: float, h: float, xlim: tuple[float, float], ylim: tuple[float, float]):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h
        self.xlim, self.ylim = xlim, ylim

    def px(self, x: Any) -> Any:
        """Data x (scalar or array) to SVG x."""
        lo, hi = self.xlim
        return self.x0 + (np.asarray(x, dtype=np.float64) - lo) / (hi - lo) * self.w

    def py(self, y: Any) -> Any:
        """Data y to SVG y (which grows downwards)."""
        lo, hi = self.ylim
        return self.y0 + self.h - (np.asarray(y, dtype=np.float64) - lo) / (hi - lo) * self.h

    def axes(self, title: str, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]) -> list[str]:
        """Background, grid, tick marks and labels, the two axis lines, title and axis labels."""
        bottom, right = self.y0 + self.h, self.x0 + self.w
        out = [f'<rect x="{self.x0}" y="{self.y0}" width="{self.w}" height="{self.h}" class="pa"/>']
        for t in xticks:
            x = float(self.px(t))
            out.append(f'<line x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{bottom}" class="grid"/>')
            out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" class="ax"/>')
            out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_E(_tick_label(t))}</text>')
        for t in yticks:
            y = float(self.py(t))
            out.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" class="grid"/>')
            out.append(f'<line x1="{self.x0 - 4}" y1="{y:.1f}" x2="{self.x0}" y2="{y:.1f}" class="ax"/>')
            out.append(f'<text x="{self.x0 - 7}" y="{y + 4:.1f}" text-anchor="end">{_E(_tick_label(t))}</text>')
        out.append(f'<line x1="{self.x0}" y1="{bottom}" x2="{right}" y2="{bottom}" class="ax"/>')
        out.append(f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{bottom}" class="ax"/>')
        centre_x, centre_y = self.x0 + self.w / 2, self.y0 + self.h / 2
        out.append(f'<text x="{centre_x:.1f}" y="{self.y0 - 10}" text-anchor="middle" class="ttl">{_E(title)}</text>')
        out.append(f'<text x="{centre_x:.1f}" y="{bottom + 34}" text-anchor="middle" class="lbl">{_E(xlabel)}</text>')
        out.append(
            f'<text x="{self.x0 - 40}" y="{centre_y:.1f}" text-anchor="middle" class="lbl" '
            f'transform="rotate(-90 {self.x0 - 40} {centre_y:.1f})">{_E(ylabel)}</text>'
        )
        return out


# ---------------------------------------------------------------------------
# legend and the <svg> element
# ---------------------------------------------------------------------------


def _legend(x: float, y: float, entries: Sequence[_LegendEntry]) -> list[str]:
    """One row per entry, 18 px apart: a sample of the line, bar or marker, then the label."""
    out = []
    for i, (label, color, dash, kind) in enumerate(entries):
        yy = y + i * 18
        if kind == "circle":
            out.append(f'<circle cx="{x + 9}" cy="{yy - 4}" r="4" fill="white" stroke="{color}" stroke-width="2"/>')
        elif kind == "box":
            out.append(
                f'<rect x="{x}" y="{yy - 9}" width="18" height="10" fill="{color}" fill-opacity="0.55" '
                f'stroke="{color}"/>'
            )
        else:
            da = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{x}" y1="{yy - 4}" x2="{x + 18}" y2="{yy - 4}" stroke="{color}" stroke-width="2"{da}/>'
            )
        out.append(f'<text x="{x + 24}" y="{yy}">{_E(label)}</text>')
    return out


def _svg(width: float, height: float, body: list[str], label: str, cls: str = "plot") -> str:
    # role/aria-label/<title>: screen readers and hovering name the plot
    return (
        f'<svg class="{cls}" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{_E(label)}"><title>{_E(label)}</title>' + "".join(body) + "</svg>"
    )


def _with_legend(frame: _Frame, body: list[str], entries: list[_LegendEntry], title: str, gap: float) -> str:
    """Add the legend right of the plot frame and size the SVG to fit both."""
    leg_x = frame.x0 + frame.w + gap
    body += _legend(leg_x, frame.y0 + 12, entries)
    longest = max((len(e.label) for e in entries), default=10)
    width = leg_x + 30 + 6.4 * longest  # 6.4 px: the width of an average 11 px character
    height = max(frame.y0 + frame.h + 46, frame.y0 + 12 + 18 * len(entries))
    return _svg(width, height, body, title)


# ---------------------------------------------------------------------------
# the plots
# ---------------------------------------------------------------------------


def line_plot(
    title: str,
    xlabel: str,
    ylabel: str,
    series: Sequence[Series],
    *,
    diagonal: bool = False,
    markers: Sequence[Marker] = (),
) -> str:
    """Curves on the unit square (ROC, PR, PRO...), one legend row per curve, as an ``<svg>``.

    Points are clipped to [0, 1] and a curve of more than 2000 points is thinned along its
    length. ``diagonal`` draws the chance line of a ROC plot; ``markers`` are open circles
    (operating points), with one legend row for all of them.
    """
    from minimaxad.metrics.ranking import downsample_idx  # torch-backed: loaded on first use, not on import

    frame = _Frame(58, 30, 300, 260, (0.0, 1.0), (0.0, 1.0))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    body = frame.axes(title, xlabel, ylabel, ticks, ticks)
    if diagonal:
        body.append(
            f'<line x1="{frame.px(0):.1f}" y1="{frame.py(0):.1f}" x2="{frame.px(1):.1f}" '
            f'y2="{frame.py(1):.1f}" class="chance"/>'
        )
    for s in series:
        x = np.clip(np.asarray(s.x, float), 0, 1)
        y = np.clip(np.asarray(s.y, float), 0, 1)
        keep = downsample_idx(x, y, _MAX_CURVE_POINTS)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(frame.px(x[keep]), frame.py(y[keep])))
        da = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        body.append(
            f'<polyline points="{pts}" fill="none" stroke="{s.color}" '
            f'stroke-width="{s.width}"{da}><title>{_E(s.label)}</title></polyline>'
        )
    for m in markers:
        body.append(
            f'<circle cx="{float(frame.px(m.x)):.1f}" cy="{float(frame.py(m.y)):.1f}" r="4" '
            f'fill="white" stroke="{m.color}" stroke-width="2"><title>{_E(m.label)}</title></circle>'
        )
    entries = [_LegendEntry(s.label, s.color, s.dash, "line") for s in series]
    if markers:
        entries.append(_LegendEntry("operating point at the image threshold", "#444", "", "circle"))
    return _with_legend(frame, body, entries, title, gap=18)


def histogram(title: str, groups: Sequence[ScoreGroup], threshold: float | None, bins: int = 24) -> str:
    """Overlaid histograms of image scores, one colour per group, on common bins, as an ``<svg>``.

    ``threshold`` (or ``None``) is drawn as a dashed vertical line. Non-finite scores are left
    out of the bars and of the ``n=`` counts in the legend.
    """
    finite = [np.asarray(g.scores, float) for g in groups]
    finite = [v[np.isfinite(v)] for v in finite]
    allv = np.concatenate(finite + [np.zeros(0)])
    if threshold is not None:
        allv = np.r_[allv, threshold]  # the threshold line is always inside the plot
    lo, hi = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.03
    lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, bins=edges)[0] for v in finite]
    cmax = max([int(c.max()) for c in counts if c.size] + [1])
    yticks = [t for t in _nice_ticks(0, cmax, 4) if abs(t - round(t)) < 1e-9]  # whole images only
    ytop = max(cmax, yticks[-1] if yticks else cmax)
    frame = _Frame(50, 30, 300, 170, (lo, hi), (0.0, float(ytop)))
    body = frame.axes(title, "image anomaly score", "images", _nice_ticks(lo, hi, 5), yticks)
    for group, c in zip(groups, counts):
        for i, n in enumerate(c):
            if n == 0:
                continue
            x0, x1 = float(frame.px(edges[i])), float(frame.px(edges[i + 1]))
            y = float(frame.py(n))
            body.append(
                f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                f'height="{frame.y0 + frame.h - y:.1f}" fill="{group.color}" fill-opacity="0.55" '
                f'stroke="{group.color}" stroke-width="0.6"><title>{_E(group.label)}: {int(n)} in '
                f"[{edges[i]:.4g}, {edges[i + 1]:.4g})</title></rect>"
            )
    entries = [_LegendEntry(f"{g.label} (n={v.size})", g.color, "", "box") for g, v in zip(groups, finite)]
    if threshold is not None:
        x = float(frame.px(threshold))
        body.append(
            f'<line x1="{x:.1f}" y1="{frame.y0}" x2="{x:.1f}" y2="{frame.y0 + frame.h}" class="thr">'
            f"<title>image threshold {threshold:.6g}</title></line>"
        )
        entries.append(_LegendEntry(f"threshold {threshold:.4g}", "#000", "5 3", "line"))
    return _with_legend(frame, body, entries, title, gap=14)


def colorbar(cmap: Any, vmin: float, vmax: float) -> str:
    """The heatmap colour scale from ``vmin`` to ``vmax`` (ticks at both ends and the middle), as an ``<svg>``."""
    lut = get_colormap(cmap)
    stops = []
    for k in range(17):  # enough stops for a smooth bar, whatever the table's length
        i = round(k * (lut.shape[0] - 1) / 16)
        r, g, b = (int(c) for c in lut[i])
        stops.append(f'<stop offset="{k / 16:.4f}" stop-color="#{r:02x}{g:02x}{b:02x}"/>')
    w, x0 = 320, 10
    body = [
        f'<defs><linearGradient id="mmad-cbar" x1="0" y1="0" x2="1" y2="0">{"".join(stops)}</linearGradient></defs>',
        f'<rect x="{x0}" y="6" width="{w}" height="16" fill="url(#mmad-cbar)" stroke="#555" stroke-width="0.6"/>',
    ]
    for frac, v in ((0.0, vmin), (0.5, (vmin + vmax) / 2), (1.0, vmax)):
        x = x0 + frac * w
        anchor = "start" if frac == 0 else ("end" if frac == 1 else "middle")
        body.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="27" class="ax"/>')
        body.append(f'<text x="{x:.1f}" y="39" text-anchor="{anchor}">{_E(_tick_label(v))}</text>')
    return _svg(w + 2 * x0, 44, body, f"heatmap colour scale {vmin:.4g} to {vmax:.4g}", cls="cbar")
